"""A fleet's voices: `deploy voice add|list|rm --fleet` on every active replica at once (each reached directly, as
`deploy generate ID` reaches it, never through the gateway), recorded in the fleet's library here
(voice_library.py); and `push_fleet_voices`, which gives a replica that joins later every voice of the library
before it is added to the fleet, so before the gateway sends it a request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.client import ServerError, add_voice, check_voice_name, delete_voice, list_voices
from deploy.errors import DeployError, NotFoundError, UsageError
from deploy.fleet.voice_library import LibraryVoice, VoiceLibrary
from deploy.ledger import Ledger
from deploy.ledger.fleets import ACTIVE, FleetStore
from deploy.settings import DeploySettings

Log = Callable[[str], None]


class FleetVoiceError(DeployError):
    """A replica refused or could not be given a fleet voice."""


def library(settings: DeploySettings, fleet_name: str) -> VoiceLibrary:
    return VoiceLibrary(settings.home_path, fleet_name)


def _active(settings: DeploySettings, fleet_name: str) -> list[tuple[str, int]]:
    """(replica name, rental id) of the fleet's active replicas."""
    with Ledger(settings.ledger_path) as ledger:
        store = FleetStore(ledger)
        fleet = store.get(fleet_name)
        store.retire_closed(fleet)
        return [(r.name, r.rental.id) for r in store.replicas(fleet, (ACTIVE,))]


def _on_replica(settings: DeploySettings, rental_id: int, call: Callable[[str, str | None, str | None], Any]) -> Any:
    """`call(url, token, cacert)` on one replica's server, through an SSH tunnel when its server is on the box's
    loopback."""
    from deploy.remote.endpoint import open_rental_endpoint
    from deploy.secrets.tokens import read_token_file

    with open_rental_endpoint(str(rental_id), settings) as (url, token_file, cacert):
        return call(url, read_token_file(token_file), cacert)


def _upload(voice: LibraryVoice, clip: Path, *, replace: bool) -> Callable[[str, str | None, str | None], dict]:
    def call(url: str, token: str | None, cacert: str | None) -> dict:
        return add_voice(
            url,
            voice.name,
            clip,
            voice.transcript,
            speaker=voice.speaker,
            description=voice.description,
            replace=replace,
            token=token,
            cacert=cacert,
        )

    return call


def add_fleet_voice(
    settings: DeploySettings,
    fleet_name: str,
    name: str,
    clip: Path,
    *,
    transcript: str,
    speaker: int = 0,
    description: str = "",
    replace: bool = False,
    log: Log,
) -> dict:
    """Upload to every active replica; record in the library when at least one took it (a later replica gets it,
    and a replica that missed it gets it again with --replace). A voice no replica took is not recorded."""
    check_voice_name(name)
    if not clip.is_file():
        raise UsageError(f"{clip}: no such file")
    lib = library(settings, fleet_name)
    if not replace and lib.find(name) is not None:
        raise UsageError(f"fleet {fleet_name!r} has a voice {name!r} already (--replace changes it)")
    replicas = _active(settings, fleet_name)
    if not replicas:
        raise UsageError(f"fleet {fleet_name!r} has no active replica to add a voice to")
    wanted = LibraryVoice(name, transcript, speaker, description, clip.name, "", 0, 0.0)
    added, failed, voice_obj = [], {}, None
    for rname, rid in replicas:
        try:
            voice_obj = _on_replica(settings, rid, _upload(wanted, clip, replace=replace))
            added.append(rname)
            log(f"{rname}: voice {name} added")
        except DeployError as exc:
            failed[rname] = str(exc)
            log(f"{rname}: {exc}")
    if not added:
        first = next(iter(failed.items()))
        raise FleetVoiceError(f"voice {name!r} was not added: {first[0]}: {first[1]}")
    lib.put(name, clip, transcript=transcript, speaker=speaker, description=description)
    result = {"fleet": fleet_name, "voice": voice_obj, "added_to": added, "failed": failed, "library": str(lib.dir)}
    if failed:
        why = "; ".join(f"{n}: {m}" for n, m in failed.items())
        raise FleetVoiceError(
            f"voice {name!r} is on {', '.join(added)} and in fleet {fleet_name!r}'s library, but not on {why} "
            f"(`deploy voice add --fleet {fleet_name} {name} CLIP --replace` tries again)"
        )
    return result


def list_fleet_voices(settings: DeploySettings, fleet_name: str) -> list[dict]:
    """The library's voices, each with the active replicas that have it (one that cannot be asked is named too)."""
    seen: dict[str, set[str]] = {}
    unreachable: dict[str, str] = {}
    replicas = _active(settings, fleet_name)
    for rname, rid in replicas:
        try:
            names = {v["id"] for v in _on_replica(settings, rid, lambda u, t, c: list_voices(u, token=t, cacert=c))}
        except DeployError as exc:
            unreachable[rname] = str(exc)
            continue
        for n in names:
            seen.setdefault(n, set()).add(rname)
    out = []
    for v in library(settings, fleet_name).voices():
        on = sorted(seen.get(v.name, set()))
        missing = [r for r, _ in replicas if r not in on and r not in unreachable]
        out.append({**v.as_dict(), "on_replicas": on, "missing_on": missing, "unreachable": sorted(unreachable)})
    return out


def remove_fleet_voice(settings: DeploySettings, fleet_name: str, name: str, *, log: Log) -> dict:
    """Delete from every active replica (one that never had it is fine) and from the library."""
    check_voice_name(name)
    lib = library(settings, fleet_name)
    in_library = lib.find(name) is not None
    removed, failed = [], {}
    for rname, rid in _active(settings, fleet_name):
        try:
            _on_replica(settings, rid, lambda u, t, c: delete_voice(u, name, token=t, cacert=c))
            removed.append(rname)
            log(f"{rname}: voice {name} deleted")
        except ServerError as exc:
            if exc.status != 404:
                failed[rname] = str(exc)
        except DeployError as exc:
            failed[rname] = str(exc)
    if not in_library and not removed and not failed:
        raise NotFoundError(f"fleet {fleet_name!r} has no voice {name!r} (`deploy voice list --fleet {fleet_name}`)")
    lib.remove(name)
    if failed:
        why = "; ".join(f"{n}: {m}" for n, m in failed.items())
        raise FleetVoiceError(f"voice {name!r} left fleet {fleet_name!r}'s library but is still on {why}")
    return {"fleet": fleet_name, "voice": name, "deleted_from": removed, "library": in_library}


def push_fleet_voices(settings: DeploySettings, fleet_name: str, rental_id: int, *, log: Log) -> list[str]:
    """Give a new replica (provisioned, not yet in the fleet: no gateway sends it anything) every voice of the
    fleet's library. A replica that refuses one is not let in: its rental is ended (nothing left billing) and the
    error says so; the caller reports it as a failed replica."""
    lib = library(settings, fleet_name)
    voices = lib.voices()
    if not voices:
        return []
    try:
        for v in voices:
            _on_replica(settings, rental_id, _upload(v, lib.clip_path(v), replace=True))
    except DeployError as exc:
        ended = _end(settings, rental_id, fleet_name, log=log)
        raise FleetVoiceError(
            f"rental {rental_id} could not take the fleet's voice {v.name!r} ({exc}); it was kept out of the "
            + ("rotation and its rental ended" if ended else f"rotation: `deploy teardown {rental_id}` ends it")
        ) from None
    names = [v.name for v in voices]
    with Ledger(settings.ledger_path) as ledger:
        ledger.event(rental_id, "voices", f"fleet {fleet_name}: {', '.join(names)} pushed before joining the rotation")
    log(f"fleet voices pushed: {', '.join(names)}")
    return names


def _end(settings: DeploySettings, rental_id: int, fleet_name: str, *, log: Log) -> bool:
    """End the rental as `deploy teardown` does; False when it stays open."""
    from deploy.providers import provider_for
    from deploy.provision.release import end_rental

    with Ledger(settings.ledger_path) as ledger:
        rental = ledger.get(rental_id)
        if rental is None or not rental.is_open:
            return True
        try:
            end_rental(
                provider_for(rental, settings), ledger, rental, settings, reason=f"fleet {fleet_name}: voices", log=log
            )
        except DeployError as exc:
            log(f"rental {rental_id}: {exc}")
            return False
        return True


Outcome = tuple[int, int | None, BaseException | None]


def push_to_new_replicas(
    settings: DeploySettings, fleet_name: str, outcomes: list[Outcome], *, log: Log
) -> list[Outcome]:
    """The hook of `add_replicas` (scale up, heal, a new fleet), between provisioning and joining the fleet: each
    replica that came up gets the fleet's voices; one that could not becomes a failure (its rental ended)."""
    out: list[Outcome] = []
    for i, rid, exc in outcomes:
        if rid is not None:
            try:
                push_fleet_voices(settings, fleet_name, rid, log=lambda m, i=i: log(f"replica {i}: {m}"))
            except DeployError as failure:
                rid, exc = None, failure
        out.append((i, rid, exc))
    return out
