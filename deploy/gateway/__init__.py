"""The fleet's gateway: HAProxy on this machine in front of a fleet's replicas.

config.py         the HAProxy config, rendered from replicas (pure)
files.py          where a fleet's gateway keeps its files (config, pid, state, sockets), written 0600
tokens.py         the client token, and scrubbing every token out of HAProxy's error lines
binary.py         finding the haproxy executable and validating a config with it
runtime_api.py    HAProxy's runtime API: per-replica stats, reload counters, drain
process.py        the HAProxy master: start, reload (streams kept), stop
errors.py         GatewayError
fleet_gateway.py  the gateway of a fleet in the ledger: backends, tunnels, start/reload/stop/status
"""
