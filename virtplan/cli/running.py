"""Running a command: its exit code, and its errors as one readable line.

Exit codes: 0 success (and `plan` without changes), 2 `plan --detailed-exitcode` with
changes (and `drift --detailed-exitcode` with drift), 1 any error, usage errors included
(one readable message; the traceback only with --debug), 130 after Ctrl-C.

`virtplan plan FILE` with no option is run as a plain call (`direct`): what the parser
would do for it is give `virtplan.cli.planning.plan` its defaults, and typer's import is
a tenth of a no-op plan's start-up. Every other command line goes through typer.
"""

from __future__ import annotations

import sys

from virtplan.cli.options import Settings
from virtplan.errors import ApplyInterrupted, VirtplanError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see virtplan.cli.early)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

INTERRUPTED = 130  # exit code after Ctrl-C, as shells report a SIGINT


class Aborted(Exception):
    """The command was stopped at a prompt (end of input, or the parser's abort)."""


def direct(argv: list[str]) -> Callable[[], int | None] | None:
    """`virtplan plan FILE` (exactly that) as a call of the plan command with its defaults; None otherwise."""
    if len(argv) != 2 or argv[0] != "plan" or argv[1].startswith("-"):
        return None
    stack = argv[1]

    def call() -> int | None:
        from pathlib import Path

        from virtplan.cli.planning import plan

        try:
            plan(Path(stack))
        except EOFError:  # as the parser does: a new line, then "aborted"
            print(file=sys.stderr)
            raise Aborted from None
        except KeyboardInterrupt:  # as the parser does: the shell's code for an interrupt, no more
            return INTERRUPTED
        return None

    return call


def run(command: Callable[[], int | None]) -> NoReturn:
    """Run `command` and exit with its code; an error is one line on stderr (the traceback
    too with --debug)."""
    try:
        code = command()
        sys.exit(code if isinstance(code, int) else 0)
    except Aborted:
        print("aborted; nothing was applied.", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted; nothing more was applied.", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except ApplyInterrupted as exc:
        fail(str(exc), exc, INTERRUPTED)
    except VirtplanError as exc:
        fail(str(exc), exc)
    except BrokenPipeError:  # `virtplan plan | head`: the reader left, nothing to say
        sys.exit(1)
    except Exception as exc:
        if type(exc).__module__ == "libvirt":
            fail(f"libvirt: {exc}", exc)
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click's usage errors (and help without a command)
            exc.show()
            sys.exit(1)  # never 2: that is --detailed-exitcode's "changes present"
        fail(f"internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback; "
             "please report it with the output of `virtplan --version`)", exc)  # fmt: skip


def fail(message: str, exc: BaseException, code: int = 1) -> NoReturn:
    """One readable message (libvirt's text exactly as it is: printed, never read as
    markup, control characters escaped), the traceback only with --debug."""
    from virtplan.model.fields import escape_controls

    if Settings.debug:
        import traceback

        traceback.print_exception(exc)
        print(version_text(), file=sys.stderr)  # what a bug report needs
    # text from stacks and hosts can hold control characters: never a raw terminal escape
    print(f"error: {escape_controls(message, keep_newlines=True)}", file=sys.stderr)
    sys.exit(code)


def version_text() -> str:
    """virtplan's version and what it runs on, for --version and bug reports."""
    import platform
    from importlib import metadata

    from virtplan._version import __version__

    parts = [f"Python {platform.python_version()}"]
    for dist in ("libvirt-python", "typer"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    try:
        import libvirt

        major, rest = divmod(libvirt.getVersion(), 1_000_000)
        parts.append(f"libvirt library {major}.{rest // 1000}.{rest % 1000}")
    except Exception:  # a broken libvirt install must not break --version
        pass
    return f"virtplan {__version__} ({', '.join(parts)})"
