"""Money: what rentals cost (rate x time from the ledger, beside the provider's own charges) and what an hour of
audio costs.

    billing.py  billed intervals and hours per rental, per UTC day, the report, vast's charge rows
    audio.py    dollars per hour of audio, at full load (from a profile) and as served
"""
