"""Autotune: measure candidate settings on this device, choose by one stated rule, write `profiles/<slug>.yaml`.

identity.py (device facts and slug) -> plan.py (what to measure) -> sweep.py (measure it) -> choice.py (the rule)
-> build.py (the Profile) -> profile.py (its schema and file) and plot.py (its PNG); apply.py is the server's side:
which profile matches this device, and what it sets.
"""
