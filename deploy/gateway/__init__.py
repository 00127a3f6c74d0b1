"""The fleet's gateway: HAProxy on this machine in front of a fleet's replicas.

config.py         the HAProxy config, rendered from replicas (pure)
haproxy.py        the HAProxy process: start, reload, drain, stop, its runtime API
fleet_gateway.py  the gateway of a fleet in the ledger: backends, tunnels, start/reload/stop/status
"""
