"""What a new user tries first: --version, -h, help that reads well, shell completion,
`validate` (offline: proven by a host socket nobody may connect to and a libvirt that
cannot be imported), the same options on every command, `import --host NAME=URI`, and
piped confirmations (refused, saying why)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import virtplan

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}


def cli(*args: str, rc: int | None = 0, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "virtplan.cli", *args], env=env or ENV, capture_output=True, text=True,
        timeout=60, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    if rc is not None:
        assert proc.returncode == rc, f"virtplan {' '.join(args)} exited {proc.returncode}, expected {rc}:\n{out}"
    assert "Traceback" not in out or "--debug" in args
    return out


def all_commands() -> list[tuple[str, ...]]:
    """Every command path, read from the command tree the CLI runs."""
    import typer

    from virtplan.cli.app import app
    from virtplan.cli.helptext import commands, tidy

    return [path for path, _ in commands(tidy(typer.main.get_command(app))) if path]


def leaf_commands() -> list[tuple[str, ...]]:
    import typer

    from virtplan.cli.app import app
    from virtplan.cli.helptext import commands, tidy

    return [path for path, cmd in commands(tidy(typer.main.get_command(app))) if path and not hasattr(cmd, "commands")]


def test_version_long_and_short_and_in_debug_output(tmp_path):
    for flag in ("--version", "-V"):
        out = cli(flag)
        assert out.startswith(f"virtplan {virtplan.__version__} (Python "), out
        assert "libvirt-python " in out and "libvirt library " in out
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    out = cli("plan", str(bad), "--debug", rc=1)
    assert "Traceback" in out and f"virtplan {virtplan.__version__} (Python " in out, "bug reports carry the version"


def test_dash_h_is_help_everywhere():
    assert "Usage: virtplan [OPTIONS] COMMAND" in cli("-h")
    for path in all_commands():
        out = cli(*path, "-h")
        assert out.startswith(f"Usage: virtplan {' '.join(path)}"), out


@pytest.mark.parametrize("path", [(), *all_commands()], ids=lambda p: " ".join(p) or "virtplan")
def test_help_has_no_type_labels_and_whole_sentences(path):
    out = cli(*path, "--help")
    labels = re.findall(r"<(?:bool|str|path|int|float|list\[[^\]]*\])>|\{[a-z_]+\}", out)
    assert not labels, f"type labels in `virtplan {' '.join(path)} --help`: {labels}\n{out}"
    if "Commands:" in out:
        listing = out.split("Commands:", 1)[1]
        entries = re.findall(r"^  (\S+)\s+(.*(?:\n {4,}\S.*)*)", listing, flags=re.M)
        assert entries
        for name, text in entries:
            summary = " ".join(text.split())
            assert not summary.endswith("...") and summary.endswith("."), f"{name}: cut mid-sentence: {summary!r}"


@pytest.mark.parametrize("path", leaf_commands(), ids=" ".join)
def test_every_command_takes_debug_and_host_as_name_uri(path):
    out = cli(*path, "--help")
    assert "--debug" in out, f"`virtplan {' '.join(path)}` has no --debug"
    if "--host" in out:
        assert "--host NAME=URI" in out, f"`virtplan {' '.join(path)}`: --host must take NAME=URI\n{out}"


def test_import_takes_name_uri_and_refuses_a_bare_uri(tmp_path):
    out = cli("import", "--host", "qemu:///system", "--out", str(tmp_path / "x.py"), rc=1)
    assert "--host 'qemu:///system' looks like a bare URI; write NAME=URI" in out
    assert "--host local=qemu:///system" in out
    socketed = "qemu+unix:///system?socket=/run/x/libvirt-sock"  # has a '=' of its own
    out = cli("import", "--host", socketed, "--out", str(tmp_path / "x.py"), rc=1)
    assert "looks like a bare URI" in out
    out = cli("plan", "stacks/demo.py", "--host", socketed, rc=1)  # the same rule on every command
    assert "looks like a bare URI" in out
    assert not (tmp_path / "x.py").exists()


def test_show_and_snapshot_list_refuse_unknown_formats():
    assert "--format 'yaml': use text or json" in cli("show", "stacks/demo.py", "--format", "yaml", rc=1)
    assert "--format 'yaml': use text or json" in cli("snapshot", "list", "stacks/demo.py", "--format", "yaml", rc=1)


# -- completion ------------------------------------------------------------------------------
@pytest.fixture
def on_path(tmp_path):
    """A `virtplan` executable first on PATH (the completion scripts call it by name)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "virtplan"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m virtplan.cli "$@"\n')
    exe.chmod(0o755)
    return {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_bash_completion_completes_commands_and_subcommands(on_path, tmp_path):
    script = tmp_path / "virtplan.bash"
    script.write_text(cli("completion", "bash"))
    program = f"""
source {script}
complete -p virtplan
COMP_WORDS=(virtplan sn); COMP_CWORD=1; _virtplan_completion virtplan; echo "1:${{COMPREPLY[*]}}"
COMP_WORDS=(virtplan snapshot r); COMP_CWORD=2; _virtplan_completion virtplan; echo "2:${{COMPREPLY[*]}}"
COMP_WORDS=(virtplan plan --de); COMP_CWORD=2; _virtplan_completion virtplan; echo "3:${{COMPREPLY[*]}}"
"""
    out = subprocess.run(["bash", "-c", program], env=on_path, capture_output=True, text=True, timeout=60).stdout
    assert "complete -o default -F _virtplan_completion virtplan" in out
    assert "1:snapshot" in out and "2:revert" in out and "3:--detailed-exitcode --debug" in out, out


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_and_the_requests_they_make(shell, on_path):
    text = cli("completion", shell)
    assert "_VIRTPLAN_COMPLETE=complete_" + shell in text and "virtplan" in text
    # what the script runs on each <TAB>: the same request, answered by virtplan itself
    env = {**on_path, "_VIRTPLAN_COMPLETE": f"complete_{shell}", "_TYPER_COMPLETE_ARGS": "virtplan snapshot re"}
    if shell == "fish":
        env["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"
    out = subprocess.run(["virtplan"], env=env, capture_output=True, text=True, timeout=60).stdout
    assert "revert" in out, out
    assert "--install-completion" in cli("--help") and "virtplan completion bash" in cli("completion", "--help")


def test_completion_refuses_other_shells():
    assert "shell 'tcsh': use bash, zsh or fish" in cli("completion", "tcsh", rc=1)


# -- validate --------------------------------------------------------------------------------
class Listener:
    """A Unix socket where a libvirt host would be: counts every connection attempt."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


VALID = """
from virtplan import VM, Host, Network, Pool, Volume
Host("h", uri="qemu+unix:///system?socket={sock}")
net = Network("v-net", cidr="10.61.0.0/24")
pool = Pool("v-pool", path="/var/lib/libvirt/images/v")
VM("v1", memory="64MiB", disks=[Volume("v1.qcow2", pool=pool, size="1GiB")], nics=[net])
"""
INVALID = VALID + 'VM("v2", memory="2 potatoes", nics=[net], disks=[Volume("v2.qcow2", pool=pool, size="1 GiB!")])\n'


@pytest.fixture
def offline(tmp_path):
    """A host socket that records connections, and a `libvirt` that cannot be imported."""
    sock = tmp_path / "libvirt-sock"
    listener = Listener(sock)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "libvirt.py").write_text("raise ImportError('validate must not import libvirt')\n")
    env = {**ENV, "PYTHONPATH": f"{shim}:{REPO}"}
    yield sock, listener, env
    listener.close()


def test_validate_checks_offline_and_exits_0_or_1(tmp_path, offline):
    sock, listener, env = offline
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(VALID.format(sock=sock))
    bad.write_text(INVALID.format(sock=sock))
    out = cli("validate", str(good), env=env)
    assert f"{good}: valid (stack good: 1 host, 1 network, 1 pool, 1 volume, 1 vm)" in out
    out = cli("validate", str(good), str(bad), env=env, rc=1)
    assert f"{good}: valid" in out and f"{bad}: error: stack is invalid (2 errors)" in out
    assert "local/vm/v2" not in out and "h/vm/v2: memory: unknown unit 'potatoes'" in out
    assert "h/volume/v-pool/v2.qcow2: size" in out
    # the same stack planned does contact the host (so the listener would have seen validate)
    cli("plan", str(good), env=ENV, rc=1)
    assert listener.accepted >= 1
    before = listener.accepted
    cli("validate", str(good), str(bad), env=env, rc=1)
    assert listener.accepted == before, "validate contacted the host"


def test_pre_commit_hook_runs_validate():
    hooks = (REPO / ".pre-commit-hooks.yaml").read_text()
    assert "entry: virtplan validate" in hooks and "id: virtplan-validate" in hooks
    assert shutil.which("bash")


# -- confirmation ----------------------------------------------------------------------------
def test_piped_yes_is_refused_with_the_reason(tmp_path):
    stack = tmp_path / "piped.py"
    stack.write_text(
        'from virtplan import Host, Network\nHost("t", uri="test:///default")\nNetwork("p-net", cidr="10.62.0.0/24")\n'
    )
    out = cli("apply", str(stack), stdin="yes\n", rc=1)
    assert "+ network p-net" in out, "the plan is shown"
    assert "no terminal to confirm on; nothing was applied. Re-run with --yes." in out
    assert "`echo yes | virtplan ...` is not accepted" in out
    assert "Apply complete" in cli("apply", str(stack), "--yes")
