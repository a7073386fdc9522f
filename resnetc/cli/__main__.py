from resnetc.cli.commands import entry

entry()
