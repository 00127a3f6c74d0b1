"""Reaching a box: commands over SSH (or on this machine), files both ways, tunnels, endpoints. The operator's
tokens live in deploy/secrets/.

host.py        Host (the interface) and RemoteHost (Fabric, host key pinned), wait_for_ssh
local_host.py  LocalHost: the same methods on this machine
tunnels.py     SSH port forwards: for a block (Fabric) or kept open for the gateway (OpenSSH)
endpoint.py    a rental's recorded endpoint, opened from here (tunnel when needed)
"""
