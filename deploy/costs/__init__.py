"""Money: what rentals cost (rate x time from the ledger, beside the provider's own charges) and what an hour of
audio costs.

    price.py    the one price of a rental (where its billing ended, then rate x time or vast's split)
    billing.py  the report: per rental, per UTC day, beside vast's charge rows
    audio.py    dollars per hour of audio, at full load (from a profile) and as served (readings of replicas' counters)
    split.py    interruptible and on-demand apart, preemptions, a fleet's last hour and day per hour of audio
"""
