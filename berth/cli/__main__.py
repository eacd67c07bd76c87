"""`python -m berth.cli` runs the `berth` command."""

from berth.cli.main import main

main()
