"""``python -m haios``."""

from haios.cli import main

main()
