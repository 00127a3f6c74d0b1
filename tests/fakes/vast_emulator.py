"""The vast.ai emulator's old import path; it lives in tests/fakes/vast/ (see its __init__ for the map)."""

from tests.fakes.vast import (
    MANIFEST_UNKNOWN,
    OCI_FAILURE,
    Fault,
    Realism,
    VastEmulator,
    closed_port,
    default_offers,
)

__all__ = ["MANIFEST_UNKNOWN", "OCI_FAILURE", "Fault", "Realism", "VastEmulator", "closed_port", "default_offers"]
