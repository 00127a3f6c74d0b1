"""Which profile a server runs with: `auto` applies the profile that matches the device it finds (and the model's
shape), otherwise keeps the safe defaults and warns, naming what was missing; a PATH is applied even on a mismatch
(the operator named it), with the mismatch in the note. `csm-runtime serve` calls `profile_overrides`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from csm_common.profiles import model_family
from csm_runtime.settings import RuntimeSettings
from csm_runtime.tuning.identity import detect_device
from csm_runtime.tuning.profile import Profile, find_profile, load_profile, profile_path

log = logging.getLogger("csm_runtime.profile")


def mismatches(profile: Profile, *, slug: str, model_id: str) -> list[str]:
    """Why this profile does not describe this device + model (empty: it does)."""
    problems = []
    if profile.slug != slug:
        problems.append(f"it was measured on {profile.slug}, this device is {slug}")
    measured = profile.identity.model.id
    if model_family(measured) != model_family(model_id):
        problems.append(
            f"it was measured with {measured} ({model_family(measured)} shape), serving {model_id} "
            f"({model_family(model_id)} shape)"
        )
    return problems


@dataclass
class ProfileNote:
    """What happened with `--profile`: reported by /ready and logged at start."""

    status: Literal["applied", "off", "defaults"]
    message: str
    path: str | None = None
    slug: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "path": self.path,
            "slug": self.slug,
            "settings": self.settings,
            "message": self.message,
        }


def _defaults_text(settings: RuntimeSettings) -> str:
    return (
        f"safe defaults (dtype {settings.dtype}, compile {settings.compile}, cuda_graphs "
        f"{str(settings.cuda_graphs).lower()}, max_streams {settings.max_streams})"
    )


def resolve_profile_file(settings: RuntimeSettings, mode: str | None = None) -> tuple[Profile | None, ProfileNote]:
    """Find and check the profile `mode` names (default settings.profile: auto | off | PATH).

    auto: `profiles_dir/<this device's slug>.yaml`, used only when it matches the device and the model shape;
    otherwise None and a note that says what was missing. PATH: that file, used even on a mismatch (the operator
    named it), with the mismatch in the note. A file that exists but does not validate raises ProfileError.
    """
    mode = settings.profile if mode is None else mode
    if mode == "off":
        return None, ProfileNote("off", f"profile off: {_defaults_text(settings)} and explicit settings")
    facts = detect_device(settings.device)
    if mode == "auto":
        path = find_profile(settings.profiles_dir, facts.slug)
        if path is None:
            wanted = profile_path(settings.profiles_dir, facts.slug)
            return None, ProfileNote(
                "defaults",
                f"no profile for this device ({facts.name}, slug {facts.slug}): {wanted} is missing; using "
                f"{_defaults_text(settings)}. Make one with `csm-runtime autotune --model {settings.model}`.",
                slug=facts.slug,
            )
        profile = load_profile(path)
        problems = mismatches(profile, slug=facts.slug, model_id=settings.model)
        if problems:
            return None, ProfileNote(
                "defaults",
                f"profile {path} does not match: {'; '.join(problems)}; using {_defaults_text(settings)}",
                path=str(path),
                slug=facts.slug,
            )
        return profile, _applied(profile, path, "")
    path = Path(mode)
    profile = load_profile(path)
    problems = mismatches(profile, slug=facts.slug, model_id=settings.model)
    warning = f" (named explicitly, applied despite: {'; '.join(problems)})" if problems else ""
    return profile, _applied(profile, path, warning)


def _applied(profile: Profile, path: Path, warning: str) -> ProfileNote:
    s = profile.chosen.settings
    message = (
        f"profile {path} applied: dtype {s.dtype}, compile {s.compile}, cuda_graphs {str(s.cuda_graphs).lower()}, "
        f"max_streams {s.max_streams}, first_chunk_frames {s.first_chunk_frames}"
        + (f", quantize {s.quantize}" if s.quantize != "off" else "")
        + warning
    )
    if not profile.chosen.realtime:
        message += "; note: autotune found no real-time setting on this device (see the profile's chosen.why)"

    return ProfileNote("applied", message, path=str(path), slug=profile.slug, settings=s.overrides())


def apply_profile(settings: RuntimeSettings, mode: str | None = None) -> tuple[RuntimeSettings, ProfileNote]:
    """Settings with the matching profile's choices applied (or unchanged), and a note; warns when none applied."""
    profile, note = resolve_profile_file(settings, mode)
    if note.status == "defaults":
        log.warning(note.message)
    else:
        log.info(note.message)
    if profile is None:
        return settings, note
    return settings.replace(**profile.chosen.settings.overrides()), note


def profile_overrides(settings: RuntimeSettings) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What `csm-runtime serve` calls: (RuntimeSettings fields to set, the note /ready reports)."""
    profile, note = resolve_profile_file(settings)
    if note.status == "defaults":
        log.warning(note.message)
    else:
        log.info(note.message)
    return (profile.chosen.settings.overrides() if profile else {}), note.as_dict()
