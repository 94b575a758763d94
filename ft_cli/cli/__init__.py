"""The command line: one thin command per stage that parses, loads the config and calls the stage (app.py holds `ft` itself)."""
