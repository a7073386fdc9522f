from resnetc.cli import entry

entry()
