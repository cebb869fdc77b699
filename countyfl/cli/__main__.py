"""``python -m countyfl.cli``: the same command as ``countyfl``."""

from countyfl.cli import main

main()
