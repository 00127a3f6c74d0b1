"""The operator's secrets on this machine: the bearer tokens the toolkit mints, and the Hub token it finds.

tokens.py      bearer tokens (one per rental, one per fleet gateway) in DEPLOY_HOME/tokens, 0600, and reading them
hub_token.py   the operator's Hugging Face token, found in the Hub's own order (never its value in a log)
"""
