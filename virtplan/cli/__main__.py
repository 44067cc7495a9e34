"""`python -m virtplan.cli`: the same as the `virtplan` command."""

from virtplan.cli import main

main()
