"""The command line: one thin command per stage that parses, loads the config and calls the stage.

`ft_cli.cli:main` is the `ft` entry point and `ft_cli.cli.app` the Typer app (commands.py holds both).
"""

from ft_cli.cli.commands import app, main

__all__ = ["app", "main"]
