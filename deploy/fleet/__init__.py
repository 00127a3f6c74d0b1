"""A fleet: N rentals serving one model behind one gateway (deploy/gateway/).

model.py     FleetSpec, typed results, the removal and replacement rules
probe.py     /ready and /metrics of one replica
replicas.py  provision N in parallel (each rolled back on its own), create a fleet
scale.py     grow, or drain and remove
heal.py      replace replicas that died or stay unready
report.py    the fleet lines of `deploy status` and `deploy cost`
"""
