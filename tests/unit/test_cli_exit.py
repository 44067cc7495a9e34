"""How the `virtplan` command leaves (`virtplan.cli._exit`): without freeing its heap object
by object, but with everything exiting must do: the status, exit handlers, flushed output,
and threads the interpreter waits for."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60)


def test_status_exit_handlers_and_buffered_output_survive_the_fast_exit() -> None:
    done = run("""
        import atexit, sys

        class Heap:
            def __del__(self):
                print("freed at exit")

        kept = Heap()  # the interpreter's teardown would free it: the fast exit leaves that to the kernel
        atexit.register(lambda: print("handler ran"))
        sys.stdout.write("buffered, no newline")  # still in the buffer when main() returns
        sys.argv = ["virtplan", "--version"]
        import virtplan.cli
        virtplan.cli.main()
        print("never reached")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("buffered, no newline")
    assert "virtplan" in done.stdout and done.stdout.rstrip().endswith("handler ran")
    assert "never reached" not in done.stdout and "freed at exit" not in done.stdout

    failed = run("""
        import sys
        sys.argv = ["virtplan", "plan", "/no/such/stack.py"]
        import virtplan.cli
        virtplan.cli.main()
    """)
    assert failed.returncode == 1 and "error:" in failed.stderr


def test_a_thread_the_interpreter_waits_for_is_waited_for() -> None:
    done = run("""
        import sys, threading, time
        def late():
            time.sleep(0.5)
            print("thread finished", flush=True)
        threading.Thread(target=late).start()  # not a daemon: exiting waits for it
        sys.argv = ["virtplan", "--version"]
        import virtplan.cli
        virtplan.cli.main()
    """)
    assert done.returncode == 0 and "thread finished" in done.stdout


def test_a_status_that_is_not_a_number_is_printed_and_is_one() -> None:
    done = run("""
        import sys
        import virtplan.cli
        virtplan.cli._exit("stopped: because")
    """)
    assert done.returncode == 1 and done.stderr.strip() == "stopped: because"
