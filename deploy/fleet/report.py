"""The fleet lines of `deploy status` and `deploy cost`: per replica and in total, requests served (from each
replica's own /metrics), the gateway's view, what the fleet costs, and what an hour of audio has cost.

Two dollar-per-audio-hour figures, since they answer different questions: `usd_per_audio_h` is what the audio served
so far cost (the live replicas' dollars since they started over the audio hours their /metrics count; a replica's
counters die with it, so removed replicas are left out of both sides), and `usd_per_audio_h_full_load` is what it
would cost with every replica busy at its profile's measured speed (USD/h over audio hours per hour at full load).

Then the last hour and the last day of the fleet, every replica it had in them (removed ones too): interruptible and
on-demand hours and dollars apart, the preemptions, and the dollars per hour of audio over the replica-time whose
audio counters were read (deploy/costs/split.py). Each replica's counter, as read here, is kept in the ledger as a
reading (deploy/costs/audio.py), so a later report can measure a window that this one only began.
"""

from __future__ import annotations

import time
from typing import Any

from deploy import output
from deploy.costs.audio import (
    Point,
    audio_hours_per_hour,
    points_from_events,
    record_sample,
    usd_per_audio_hour,
    usd_per_audio_hour_served,
)
from deploy.costs.price import price
from deploy.costs.split import DAY_S, HOUR_S, describe_window, fleet_window, kind
from deploy.errors import DeployError
from deploy.fleet.model import replica_token, replica_verify
from deploy.fleet.probe import probe
from deploy.gateway.errors import GatewayError
from deploy.gateway.fleet_gateway import paths, replica_url
from deploy.gateway.process import master_pid
from deploy.gateway.runtime_api import ServerStat, server_stats
from deploy.ledger import Ledger, Rental
from deploy.ledger.fleets import ALL_STATES, FleetStore
from deploy.providers.records import Charge
from deploy.settings import DeploySettings


def fleet_reports(
    settings: DeploySettings,
    ledger: Ledger,
    *,
    now: float | None = None,
    charges: dict[str, dict[str, Charge]] | None = None,
) -> list[dict[str, Any]]:
    """One dict per fleet: its replicas (each probed once, 3 s at most) and the totals. Each replica is priced as
    `deploy cost` prices its rental (deploy/costs/price.py); `charges`: the providers' own rows, where asked."""
    now = time.time() if now is None else now
    store = FleetStore(ledger)
    out = []
    for fleet in store.fleets():
        p = paths(settings, fleet)
        stats: dict[str, ServerStat] = {}
        if master_pid(p) is not None:
            try:
                stats = server_stats(p)
            except GatewayError:
                stats = {}
        store.retire_closed(fleet)  # `deploy teardown ID` of a replica: it left the fleet
        rows, capacity_audio_h_per_h = [], 0.0
        rentals = [x.rental for x in store.replicas(fleet, ALL_STATES) if _in_last_day(x.rental, now)]
        events = {r.id: ledger.events(r.id) for r in rentals}
        points = {r.id: points_from_events(events[r.id]) for r in rentals}
        for r in store.replicas(fleet):
            url = replica_url(settings, fleet, r)
            pr, detail = None, "no endpoint" if not r.endpoint else "tunnel closed"
            if url:
                try:
                    pr = probe(url, replica_token(r), timeout=3.0, verify=replica_verify(r))
                    detail = pr.detail
                except DeployError as exc:  # a missing token file: a status line, never a crash
                    detail = str(exc)
            profile = r.rental.server.profile or {}
            capacity_audio_h_per_h += audio_hours_per_hour(profile.get("rtf"), profile.get("max_streams")) or 0.0
            stat = stats.get(r.name)
            if pr and pr.metrics:  # a reading of its audio counter: kept, and the window's last point
                seconds = pr.metrics.get("audio_seconds", 0.0)
                kept = points.setdefault(r.rental.id, [])
                record_sample(ledger, r.rental.id, seconds, last=kept[-1] if kept else None)
                kept.append(Point(now, seconds))
            rows.append(
                {
                    **r.as_dict(),
                    "ready": bool(pr and pr.ready),
                    "probe": detail,
                    "requests": pr.requests if pr and pr.metrics else None,
                    "audio_seconds": round(pr.metrics.get("audio_seconds", 0.0), 2) if pr and pr.metrics else None,
                    "active_streams": int(pr.metrics.get("active_streams", 0)) if pr and pr.metrics else None,
                    "gateway": stat.status if stat else None,
                    "kind": kind(r.rental),
                    "bid_usd_h": r.rental.billing.bid_usd_h,
                    "preempted_at": r.rental.billing.preempted_at,
                    "usd": round(price(r.rental, now=now, charge=_charge(charges, r.rental)).usd, 6),
                }
            )
        rate = sum(x["rate_usd_h"] for x in rows)
        usd = sum(x["usd"] for x in rows)
        audio = sum(x["audio_seconds"] or 0.0 for x in rows)
        windows = {
            name: fleet_window(rentals, now=now, seconds=span, points=points, events=events, charges=charges)
            for name, span in (("last_hour", HOUR_S), ("last_day", DAY_S))
        }
        out.append(
            {
                "fleet": fleet.name,
                "gateway": {"running": bool(stats) or master_pid(p) is not None, "port": fleet.gateway.get("port")},
                "replicas": rows,
                "total": {
                    "replicas": len(rows),
                    "ready": sum(1 for x in rows if x["ready"]),
                    "rate_usd_h": round(rate, 6),
                    "requests": sum(x["requests"] or 0 for x in rows),
                    "audio_seconds": round(audio, 2),
                    "usd": round(usd, 6),
                    "usd_per_audio_h": usd_per_audio_hour_served(usd, audio),
                    "usd_per_audio_h_full_load": usd_per_audio_hour(rate, capacity_audio_h_per_h),
                    **{name: w.as_dict() for name, w in windows.items()},
                },
                "windows": windows,
            }
        )
    return out


def _in_last_day(rental: Rental, now: float) -> bool:
    """Whether it may have billed in the last day (its billed end is never after its ledger end)."""
    return rental.ended_at is None or rental.ended_at >= now - DAY_S


def _charge(charges: dict[str, dict[str, Charge]] | None, rental: Rental) -> Charge | None:
    return ((charges or {}).get(rental.provider) or {}).get(rental.provider_id or "")


def _usd(x: float | None) -> str:
    return "unknown" if x is None else f"${x:.4f}"


def _row(x: dict[str, Any]) -> tuple[Any, ...]:
    ready = "yes" if x["ready"] else x["probe"]
    requests = "" if x["requests"] is None else x["requests"]
    audio = "" if x["audio_seconds"] is None else x["audio_seconds"]
    return (
        x["replica"],
        x["rental_id"],
        x["state"],
        x["gateway"] or "",
        _kind(x),
        ready,
        requests,
        audio,
        f"{x['rate_usd_h']:.3f}",
        _usd(x["usd"]),
    )


def emit_tables(reports: list[dict[str, Any]]) -> None:
    """The human form: one table per fleet, the totals in its caption."""
    for f in reports:
        rows = [_row(x) for x in f["replicas"]]
        t = f["total"]
        g = f["gateway"]
        where = f"gateway on port {g['port']}" if g["running"] else "gateway not running"
        caption = (
            f"{t['ready']}/{t['replicas']} ready, {where}; {t['requests']} requests, {t['audio_seconds']} s of audio; "
            f"{t['rate_usd_h']:.3f} USD/h; per hour of audio: {_usd(t['usd_per_audio_h'])} so far, "
            f"{_usd(t['usd_per_audio_h_full_load'])} at full load"
        )
        cols = ("replica", "rental", "state", "gateway", "kind", "ready", "requests", "audio s", "USD/h", "USD")
        output.emit_table(f"fleet {f['fleet']}", cols, rows, caption=caption)
        for name, w in f["windows"].items():
            output.emit_text(describe_window(f"fleet {f['fleet']}, {name.replace('_', ' ')}", w))


def _kind(x: dict[str, Any]) -> str:
    if x["kind"] != "interruptible":
        return x["kind"]
    bid = "" if x["bid_usd_h"] is None else f" bid ${x['bid_usd_h']:.3f}"
    return f"interruptible{bid}" + (", preempted" if x["preempted_at"] is not None else "")
