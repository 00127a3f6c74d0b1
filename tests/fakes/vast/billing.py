"""What an instance costs, two ways: the kind emulator's rate x lifetime, and vast's split (docs.vast.ai billing):
GPU per second while running, disk per second from create until destroy (stopped included), bandwidth per byte.
`record` is the emulator's own account of an instance's billed lifetime, for cost tests to compare against."""

from __future__ import annotations

from typing import Any

HOURS_PER_MONTH = 30 * 24


Spans = list[tuple[float, float]]  # (from, to) while the container ran: what the GPU bills


def record(inst: dict[str, Any], now: float, running_spans: Spans) -> dict[str, Any]:
    end = inst["_destroyed_at"] or now
    created = inst["start_date"]
    gpu_h = sum(max(0.0, min(b, end) - a) for a, b in running_spans) / 3600
    lifetime_h = max(0.0, end - created) / 3600  # the disk bills all of it
    disk_rate = inst["_storage_cost"] * float(inst["disk_space"] or 0) / HOURS_PER_MONTH
    down_gb, up_gb = inst["_transfer"]
    gpu_usd = inst["_gpu_rate"] * gpu_h
    disk_usd = disk_rate * lifetime_h
    bwd_usd, bwu_usd = down_gb * inst["_inet_down_cost"], up_gb * inst["_inet_up_cost"]
    return {
        "id": inst["id"],
        "created_at": created,
        "running_at": running_spans[0][0] if running_spans else None,
        "destroyed_at": inst["_destroyed_at"],
        "gpu_hours": gpu_h,
        "disk_hours": lifetime_h,
        "gpu_usd": gpu_usd,
        "disk_usd": disk_usd,
        "bandwidth_usd": bwd_usd + bwu_usd,
        "total_usd": gpu_usd + disk_usd + bwd_usd + bwu_usd,
        "kind_usd": inst["dph_total"] * lifetime_h,  # what the kind emulator charges: rate x lifetime
    }


def charge_row(inst: dict[str, Any], now: float, running_spans: Spans, *, split: bool) -> dict[str, Any]:
    rec = record(inst, now, running_spans)
    end = inst["_destroyed_at"] or now
    row = {
        "id": inst["id"],
        "type": "instance",
        "source": f"instance-{inst['id']}",
        "description": inst["label"],
        "start": inst["start_date"],
        "end": end,
        "items": [],
    }
    if not split:
        return {**row, "amount": round(rec["kind_usd"], 6)}
    parts = [
        ("gpu", rec["gpu_usd"], f"{rec['gpu_hours']:.3f} hours at ${inst['_gpu_rate']:.3f}/hour"),
        ("disk", rec["disk_usd"], f"{float(inst['disk_space'] or 0):g} GB for {rec['disk_hours']:.3f} hours"),
        ("bwd", inst["_transfer"][0] * inst["_inet_down_cost"], f"{inst['_transfer'][0]:g} GB down"),
        ("bwu", inst["_transfer"][1] * inst["_inet_up_cost"], f"{inst['_transfer'][1]:g} GB up"),
    ]
    items = [
        {"start": row["start"], "end": end, "type": t, "source": None, "description": d, "amount": round(a, 6)}
        for t, a, d in parts
    ]
    return {**row, "amount": round(rec["total_usd"], 6), "metadata": {"label": inst["label"]}, "items": items}
