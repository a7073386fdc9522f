"""The command line: `resnetc ...` and `python -m resnetc ...`."""

from resnetc.cli.commands import entry, main

__all__ = ["entry", "main"]
