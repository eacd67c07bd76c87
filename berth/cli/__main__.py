"""`python -m berth.cli` runs the `berth` command."""

from berth.cli.entry import main

main()
