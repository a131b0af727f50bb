"""The ``fleet`` CLI (entry point ``fleet.cli.main:main``): REST calls and the live feed of a
Fleet server, from a terminal or a script. It never imports ``fleet.server``."""
