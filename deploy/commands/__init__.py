"""One module per `deploy` command; each defines a function of the same name that cli.py registers."""
