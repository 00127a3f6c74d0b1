"""The profile file contract both planes rely on: `profiles/<slug>.yaml`, schema version 1, and which models a
profile transfers between. The runtime validates a profile fully (csm_runtime's tuning); the control plane checks only
this much, to push the right file to a box or to refuse a bad copy coming back."""

from __future__ import annotations

SCHEMA_VERSION = 1


def model_family(model_id: str) -> str:
    """Profiles transfer between models of one shape: `tiny-random` is its own family; every other model (the real
    checkpoint, `csm-1b-random`, a local copy) has CSM-1B's shape."""
    return "tiny" if model_id == "tiny-random" else "csm-1b"


def profile_filename(slug: str) -> str:
    return f"{slug}.yaml"
