"""Which of vast.ai's less forgiving behaviours the emulator shows, and the documented numbers behind them.

Every field defaults to a kind behaviour; `Realism.strict()` turns every realistic behaviour on. The emulator is
built strict unless told `strict=False`, and any option passed explicitly wins. Sources for each number:
docs/provisioning.md#what-the-flow-asks-of-vastai (docs.vast.ai, vast-cli 1.9.1, SkyPilot, dstack).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

# Per-endpoint minimum intervals in seconds per API key (x-rate-limit thresholds in vast-ai/docs
# api-reference/openapi/yaml/*.yaml; the unit is not stated there, seconds between requests is the cautious reading).
DOCUMENTED_RATE_LIMITS: dict[str, float] = {
    "GET /api/v0/instances/{id}/": 2.0,  # show instance
    "GET /api/v1/instances/": 1.0,  # show instances
    "PUT /api/v0/asks/{id}/": 4.5,  # create instance
    "DELETE /api/v0/instances/{id}/": 3.0,  # destroy instance
    "PUT /api/v0/instances/{id}/": 1.0,  # label / start / stop
    "GET /api/v0/charges/": 1.0,  # show invoices-v1 --charges
}
DOCUMENTED_SEARCHES_PER_MINUTE = 10  # search offers: "requests: 10 per minute"

# What a container that cannot start says in `status_msg` (dstack matches the first; docker prints the second).
OCI_FAILURE = (
    "Error response from daemon: failed to create task for container: failed to create shim task: "
    'OCI runtime create failed: runc create failed: unable to start container process: exec: "/entrypoint.sh": '
    "permission denied: unknown"
)
MANIFEST_UNKNOWN = "Error response from daemon: manifest for example/csm-runtime:nope not found: manifest unknown"

GONE_SHAPES = ("null", "404", "empty", "destroyed")
ATTACH_MODES = ("applied", "refused", "dropped")


@dataclass(frozen=True)
class Realism:
    # Each instance is a box of its own: a home bind-mounted at /root, its own sshd listening only while the instance
    # runs, the create's `onstart` run there (with CONTAINER_ID / CONTAINER_API_KEY) when it starts running.
    boxes: bool = False
    # The box's sessions go through vast's ~/.bashrc tmux hook unless ~/.no_auto_tmux exists: `ssh box cmd` prints
    # "no sessions" / "open terminal failed: not a terminal" and exits 1 without running cmd. Needs `boxes`.
    auto_tmux: bool = False
    # actual_status is null (cur_state already "running") for this long after create, then "loading", then running.
    null_status_s: float = 0.0
    # ssh_host/ssh_port are in the record from create on (vast shows them while loading), before the box listens.
    early_ssh_endpoint: bool = False
    # Minimum seconds between requests to one endpoint per key; a faster one gets 429 and no Retry-After.
    rate_limits: dict[str, float] = field(default_factory=dict)
    searches_per_minute: int | None = None
    # What `show instance` answers once an instance is destroyed (see GONE_SHAPES).
    gone_after_destroy: str = "null"
    # `-p` mappings (and a direct 22/tcp) exist only for a direct runtype on an offer with direct_port_count >= 1;
    # plain `--ssh` is runtype ssh_proxy and maps nothing.
    direct_ports_only: bool = False
    # A search filter on a field outside vast's table is a 400 (the kind emulator ignores it).
    reject_unknown_filters: bool = False
    # Create returns an `instance_api_key`; it works only on its own instance (GET/PUT/DELETE).
    instance_keys: bool = False
    # Charges: GPU from `running`, disk from create, bandwidth by the GB; `amount` is their sum.
    split_billing: bool = False
    # An offer taken meanwhile answers 404 "no_such_ask ..." as documented (the kind emulator: 400).
    documented_refusal: bool = False
    # Injected 429s carry `Retry-After: 0` (vast sends no Retry-After at all).
    retry_after_header: bool = True
    # `attach ssh` before the instance runs (null or loading): "applied" (the key reaches the box), "refused" (400),
    # or "dropped" (`{"success": true}`, and the key never reaches the box). ssh_access.py.
    attach_before_running: str = "applied"
    # An edge in front of the API refuses clients by User-Agent (403 "error code: 1010", as Cloudflare's browser
    # check does): no User-Agent, or urllib's default one. The vastai CLI's passes (edge.py).
    user_agent_edge: bool = False

    @classmethod
    def strict(cls) -> Realism:
        return cls(
            boxes=True,
            auto_tmux=True,
            null_status_s=1.0,
            early_ssh_endpoint=True,
            rate_limits=dict(DOCUMENTED_RATE_LIMITS),
            searches_per_minute=DOCUMENTED_SEARCHES_PER_MINUTE,
            gone_after_destroy="404",
            direct_ports_only=True,
            reject_unknown_filters=True,
            instance_keys=True,
            split_billing=True,
            documented_refusal=True,
            retry_after_header=False,
            attach_before_running="dropped",
        )

    def with_options(self, **options: object) -> Realism:
        """These options on top (None means: keep), checked by name."""
        known = {f.name for f in fields(self)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown emulator options: {sorted(unknown)}")
        chosen = {k: v for k, v in options.items() if v is not None}
        out = replace(self, **chosen)
        if out.gone_after_destroy not in GONE_SHAPES:
            raise ValueError(f"gone_after_destroy must be one of {GONE_SHAPES}")
        if out.attach_before_running not in ATTACH_MODES:
            raise ValueError(f"attach_before_running must be one of {ATTACH_MODES}")
        if out.auto_tmux and not out.boxes:
            out = replace(out, boxes=True)
        return out
