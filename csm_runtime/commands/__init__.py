"""The `csm-runtime` subcommands, one module each (cli.py lists them): options, one library call, output."""
