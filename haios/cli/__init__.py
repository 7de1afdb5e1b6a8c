"""The command line (typer). Commands parse arguments, call one library function and render the result."""

from ._app import app, main

__all__ = ["app", "main"]
