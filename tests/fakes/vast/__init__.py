"""A stateful emulation of the vast.ai REST API, for the REAL vastai CLI to talk to (vast.ai itself cannot exist here).

    emulator.py  VastEmulator: offers, instances and their lifecycle on a test-controlled clock, the test controls
    api.py       the HTTP server and routes (what vastai 1.9.1 sends, what vast answers)
    creates.py   how a create becomes an instance; creates held in flight, or that commit and answer an error
    realism.py   which of vast's less forgiving behaviours are on (`strict=True`: all), and the documented numbers
    boxes.py     with `boxes`: one box per instance (own home, own sshd, onstart, vast's tmux hook)
    faults.py    injected faults and vast's per-endpoint rate limits
    offers.py    the default offers and `search offers`
    billing.py   rate x time, or vast's GPU / disk / bandwidth split, and each instance's billed lifetime
    listing.py   `show instances` paged as vast pages it (25 a page, keyset tokens, label filters)
    ssh_access.py  SSH keys attached before an instance runs, and a direct SSH route that does not answer
    crowd.py     an account of many instances made straight in the state (for the listing)
    client_env.py  the environment the real vastai CLI needs to talk to the emulator (URL, key, a HOME of its own)

By default the emulator behaves as vast.ai does (`strict=True`: every realistic behaviour of realism.py on);
`strict=False` is a kinder vast, for tests about something else. docs/provisioning.md#what-the-flow-asks-of-vastai
says what real vast does, with sources, and which option shows it.
"""

from tests.fakes.vast.client_env import vastai_env
from tests.fakes.vast.creates import closed_port
from tests.fakes.vast.emulator import VastEmulator
from tests.fakes.vast.faults import Fault
from tests.fakes.vast.offers import default_offers
from tests.fakes.vast.realism import MANIFEST_UNKNOWN, OCI_FAILURE, Realism

__all__ = [
    "MANIFEST_UNKNOWN",
    "OCI_FAILURE",
    "Fault",
    "Realism",
    "VastEmulator",
    "closed_port",
    "default_offers",
    "vastai_env",
]
