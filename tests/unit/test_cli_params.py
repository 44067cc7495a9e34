"""`virtplan.cli.params.typed`: a plain command function as typer reads it, its defaults and
help its own, each option given once."""

import pytest
import typer
from typer.testing import CliRunner

from virtplan.cli.params import DebugOpt, StackArg, typed


def greet(stack: str, debug: bool = False) -> None:
    """Say which stack."""
    print(f"{stack} debug={debug}")


def test_typer_sees_the_plain_function_with_its_options_and_defaults():
    app = typer.Typer()
    app.command("greet")(typed(greet, stack=StackArg, debug=DebugOpt))
    app.command("other")(lambda: None)  # two commands: "greet" is a subcommand
    runner = CliRunner()
    assert runner.invoke(app, ["greet", "x.py"]).output == "x.py debug=False\n"
    assert runner.invoke(app, ["greet", "x.py", "--debug"]).output == "x.py debug=True\n"
    shown = runner.invoke(app, ["greet", "--help"]).output
    assert "Say which stack." in shown and "--debug" in shown and "Stack program" in shown


def test_options_for_other_parameters_than_the_function_has_are_refused():
    with pytest.raises(TypeError, match=r"greet: .*\['debug', 'verbose'\]"):
        typed(greet, stack=StackArg, verbose=DebugOpt)
