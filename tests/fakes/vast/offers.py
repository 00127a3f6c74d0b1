"""The offers the emulator rents out, and `search offers` (POST /api/v0/bundles/) over them."""

from __future__ import annotations

from typing import Any

# The filter fields vastai 1.9.1 knows (vastai/api/query.py `offers_fields`; it only warns about others and sends
# them anyway), plus columns other clients filter on that the server accepts (dstack: reliability2, score;
# SkyPilot: hosting_type) and `dph_base`.
FILTER_FIELDS = frozenset(
    [
        "bw_nvlink",
        "compute_cap",
        "cpu_arch",
        "cpu_cores",
        "cpu_cores_effective",
        "cpu_ghz",
        "cpu_ram",
        "cuda_max_good",
        "datacenter",
        "direct_port_count",
        "driver_version",
        "disk_bw",
        "disk_space",
        "dlperf",
        "dlperf_per_dphtotal",
        "dph_total",
        "duration",
        "external",
        "flops_per_dphtotal",
        "gpu_arch",
        "gpu_display_active",
        "gpu_frac",
        "gpu_mem_bw",
        "gpu_name",
        "gpu_ram",
        "gpu_total_ram",
        "gpu_max_power",
        "gpu_max_temp",
        "has_avx",
        "host_id",
        "id",
        "inet_down",
        "inet_down_cost",
        "inet_up",
        "inet_up_cost",
        "machine_id",
        "min_bid",
        "mobo_name",
        "num_gpus",
        "pci_gen",
        "pcie_bw",
        "reliability",
        "rentable",
        "rented",
        "storage_cost",
        "static_ip",
        "total_flops",
        "ubuntu_version",
        "verification",
        "verified",
        "vms_enabled",
        "geolocation",
        "cluster_id",
        "reliability2",
        "score",
        "hosting_type",
        "dph_base",
    ]
)
# Keys of the search body that are not filters.
CONTROL_KEYS = frozenset({"order", "type", "limit", "allocated_storage", "disable_bundling"})
ALIASES = {"reliability": "reliability2"}
BID_SHARE = 0.45  # a default offer's min_bid as a share of its on-demand price


def default_offers() -> list[dict[str, Any]]:
    base = {
        "num_gpus": 1,
        "rentable": True,
        "rented": False,
        "verified": True,
        "external": False,
        "reliability2": 0.995,
        "cuda_max_good": 12.8,
        "compute_cap": 890,
        "disk_space": 200.0,
        "gpu_ram": 24564,
        "geolocation": "Sweden, SE",
        "direct_port_count": 40,
        "inet_down": 900.0,
        "inet_up": 800.0,
        "inet_down_cost": 0.005,  # $/GB
        "inet_up_cost": 0.01,
        "storage_cost": 0.15,  # $/GB/month
    }
    rows = [
        (1001, "RTX 4090", 0.35, 11),
        (1002, "RTX 4090", 0.42, 12),
        (1003, "RTX 4090", 0.55, 13),
        (1004, "RTX 4090", 0.61, 14),
        (2001, "RTX 3090", 0.18, 21),
        (3001, "H100 SXM", 2.10, 31),
    ]
    # min_bid: the lowest bid the machine takes for an interruptible instance (the GPU alone, USD/h), well under
    # the on-demand price as on vast
    return [
        {
            **base,
            "id": i,
            "ask_contract_id": i,
            "gpu_name": g,
            "dph_total": p,
            "min_bid": round(p * BID_SHARE, 4),
            "host_id": h,
            "machine_id": h * 10,
        }
        for i, g, p, h in rows
    ]


def unknown_filters(query: dict[str, Any]) -> list[str]:
    return sorted(
        k for k, v in query.items() if k not in CONTROL_KEYS and isinstance(v, dict) and k not in FILTER_FIELDS
    )


_OPS = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}


def search(offers: list[dict[str, Any]], query: dict[str, Any]) -> list[dict[str, Any]]:
    """Filters on fields an offer lacks are ignored (the kind emulator's habit); order and limit as vast does."""

    def ok(offer: dict[str, Any]) -> bool:
        for fld, conds in query.items():
            if not isinstance(conds, dict):
                continue
            key = ALIASES.get(fld, fld)
            if key not in offer:
                continue
            have = offer[key]
            if have is None:  # a field the offer has no value for (min_bid of an on-demand-only offer) matches nothing
                return False
            for op, want in conds.items():
                if isinstance(have, bool):
                    want = want in (True, "true", "True")
                elif isinstance(have, (int, float)) and not isinstance(want, list):
                    want = float(want)
                if not _OPS[op](have, want):
                    return False
        return True

    bids = query.get("type") in ("bid", "interruptible")  # bid offers: those that take a bid (carry min_bid)
    rows = [o for o in offers if ok(o) and (not bids or o.get("min_bid") is not None)]
    for fld, direction in reversed(query.get("order") or []):
        rows.sort(key=lambda o, f=fld: o.get(f) or 0, reverse=direction == "desc")
    return rows[: int(query.get("limit") or 64)]
