"""`virtplan completion SHELL`: the shell completion script for bash, zsh or fish.

typer answers completion requests (`_VIRTPLAN_COMPLETE=complete_<shell> virtplan ...`);
the script makes the shell ask. `--install-completion` guesses the shell from the parent
process; this command takes it explicitly, for dotfiles and packages.
"""

from __future__ import annotations

from typing import Annotated

import typer

SHELLS = ("bash", "zsh", "fish")
INSTALL = {
    "bash": "virtplan completion bash > ~/.local/share/bash-completion/completions/virtplan",
    "zsh": 'virtplan completion zsh > "${fpath[1]}/_virtplan"   # or any folder on $fpath',
    "fish": "virtplan completion fish > ~/.config/fish/completions/virtplan.fish",
}


def script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="virtplan", complete_var="_VIRTPLAN_COMPLETE", shell=shell)


def register(app: typer.Typer) -> None:
    @app.command("completion")
    def completion(
        shell: Annotated[str, typer.Argument(help="bash, zsh or fish", metavar="SHELL")],
        debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    ) -> None:
        """Print the shell completion script for bash, zsh or fish.

        Install it once: bash: `virtplan completion bash >
        ~/.local/share/bash-completion/completions/virtplan`; zsh: `virtplan completion zsh >
        "${fpath[1]}/_virtplan"`; fish: `virtplan completion fish >
        ~/.config/fish/completions/virtplan.fish`. Then open a new shell.
        """
        from virtplan.cli.options import check_format, set_debug

        set_debug(debug)
        check_format(shell, SHELLS, what="shell")
        text = script(shell)
        typer.echo(text, nl=not text.endswith("\n"))
