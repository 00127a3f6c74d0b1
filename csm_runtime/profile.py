"""The profile: what autotune measured on one device and the settings it chose, as `profiles/<slug>.yaml`.

One file per device slug (the slug table is `csm_common/gpus.py`, shared with the control plane). Schema version 1:
identity (device facts, driver, CUDA, package versions, model id and revision, date), the rule and the settings it
chose with the measurements behind them, and the full candidate table, skipped and OOM rows included with their
reasons. Loading validates everything (pydantic, unknown keys rejected); a malformed file or another schema version is
a `ProfileError` with one clear line, never a half-applied profile.

The runtime side is `apply_profile` (and `profile_overrides`, what `serve` calls): `auto` applies the profile that
matches the device it finds, otherwise keeps the safe defaults and warns, naming what was missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .settings import RuntimeSettings

log = logging.getLogger("csm_runtime.profile")

SCHEMA_VERSION = 1
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
Status = Literal["measured", "skipped", "oom", "failed"]


class ProfileError(ValueError):
    """A profile that cannot be read, validated or used; the message names the file and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- identity ---------------------------------------------------------------------------------------------------


class DeviceIdentity(_Strict):
    kind: Literal["cuda", "cpu"]
    slug: str = Field(min_length=1)
    name: str
    cpu_model: str
    cpu_cores: int = Field(ge=1)
    host_memory_mb: int | None = None
    gpu_memory_mb: int | None = None
    compute_capability: str | None = None
    driver: str | None = None
    cuda: str | None = None
    gpu_count: int | None = None


class Versions(_Strict):
    python: str
    torch: str
    transformers: str
    moshi: str


class ModelIdentity(_Strict):
    id: str = Field(min_length=1)
    revision: str | None = None


class Identity(_Strict):
    device: DeviceIdentity
    versions: Versions
    model: ModelIdentity
    created: datetime


# --- measurements -------------------------------------------------------------------------------------------------


class Measurement(_Strict):
    """One candidate, timed with `batch` streams decoding together (one frame per stream per step)."""

    frames_timed: int = Field(ge=1)
    ms_per_frame_p50: float = Field(ge=0)
    ms_per_frame_p95: float = Field(ge=0)
    ms_per_frame_mean: float = Field(ge=0)
    rtf: float = Field(ge=0)  # mean step wall time / 80 ms of audio: the same for every stream of the batch
    ttfa_ms: dict[int, float]  # first_chunk_frames -> time to first audio of a request joining the busy batch
    prefill_ms: float = Field(ge=0)
    peak_memory_mb: float | None = None
    memory_kind: Literal["cuda_max_allocated", "process_rss"]
    compile_s: float = Field(ge=0)
    warmup_s: float = Field(ge=0)
    cuda_graphs_active: bool

    def ttfa_at(self, first_chunk_frames: int) -> float:
        return self.ttfa_ms[first_chunk_frames]


class Candidate(_Strict):
    id: str  # `bfloat16/default/graphs/b8`
    dtype: Literal["float32", "bfloat16", "float16"]
    compile: CompileMode
    cuda_graphs: bool
    batch: int = Field(ge=1)
    status: Status
    reason: str | None = None  # why skipped / OOM / failed
    measurement: Measurement | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Candidate:
        if (self.status == "measured") != (self.measurement is not None):
            raise ValueError(f"candidate {self.id}: status {self.status} but measurement is {self.measurement!r:.20}")
        if self.status != "measured" and not self.reason:
            raise ValueError(f"candidate {self.id}: status {self.status} needs a reason")
        return self

    @property
    def setting(self) -> tuple[str, str, bool]:
        """The line this candidate belongs to on the plot: everything but the batch."""
        return (self.dtype, self.compile, self.cuda_graphs)


# --- the choice ---------------------------------------------------------------------------------------------------


class Rule(_Strict):
    rtf_max: float = Field(gt=0)  # real time with headroom
    ttfa_target_ms: float = Field(gt=0)
    text: str


class ChosenSettings(_Strict):
    """Exactly the RuntimeSettings fields a profile sets; everything else keeps its own source."""

    dtype: Literal["float32", "bfloat16", "float16"]
    compile: CompileMode
    cuda_graphs: bool
    max_streams: int = Field(ge=1)
    first_chunk_frames: int = Field(ge=1)

    def overrides(self) -> dict[str, Any]:
        return self.model_dump()


class Choice(_Strict):
    candidate: str
    settings: ChosenSettings
    realtime: bool  # False: nothing met the rule, the fastest single stream was kept so the server still runs
    why: str
    measurement: Measurement


class SweepInfo(_Strict):
    quick: bool
    dtypes: list[str]
    compile_modes: list[str]
    cuda_graphs: list[bool]
    batches: list[int]
    first_chunk_frames: list[int]
    warmup_frames: int
    timed_frames: int
    stop_rtf: float
    prompt: str
    duration_s: float
    cpu_threads: int = 0  # torch intra-op threads the sweep ran with (0 = torch's default)


class Profile(_Strict):
    schema_version: Literal[1]
    slug: str = Field(min_length=1)
    identity: Identity
    rule: Rule
    chosen: Choice
    sweep: SweepInfo
    candidates: list[Candidate] = Field(min_length=1)
    plot: str | None = None  # the PNG beside this file

    @model_validator(mode="after")
    def _chosen_is_measured(self) -> Profile:
        if self.slug != self.identity.device.slug:
            raise ValueError(f"slug {self.slug!r} differs from identity.device.slug {self.identity.device.slug!r}")
        by_id = {c.id: c for c in self.candidates}
        if len(by_id) != len(self.candidates):
            raise ValueError("candidate ids are not unique")
        chosen = by_id.get(self.chosen.candidate)
        if chosen is None or chosen.status != "measured":
            raise ValueError(f"chosen candidate {self.chosen.candidate!r} is not a measured row of the table")
        return self

    def candidate(self, cid: str) -> Candidate:
        return next(c for c in self.candidates if c.id == cid)


# --- files --------------------------------------------------------------------------------------------------------


def profile_path(profiles_dir: str | Path, slug: str) -> Path:
    return Path(profiles_dir) / f"{slug}.yaml"


def dump_profile(profile: Profile, path: str | Path) -> Path:
    """Write YAML (keys in schema order, so a diff between two runs reads top-down)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False, width=120, allow_unicode=True)
    path.write_text(f"# csm-runtime autotune profile for {profile.slug}; written by `csm-runtime autotune`.\n{text}")
    return path


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def parse_profile(data: Any, source: str = "profile") -> Profile:
    """Validate already-loaded YAML; the schema version is checked first so a newer file says so plainly."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: expected a mapping, got {type(data).__name__}")
    version = data.get("schema_version")
    if version is None:
        raise ProfileError(f"{source}: no schema_version: not a csm-runtime profile")
    if version != SCHEMA_VERSION:
        raise ProfileError(
            f"{source}: schema_version {version!r} is not supported (this runtime reads {SCHEMA_VERSION}); "
            "re-run `csm-runtime autotune` or use a matching csm-runtime"
        )
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{source}: invalid profile: {_first_error(exc)}") from None


def load_profile(path: str | Path) -> Profile:
    """Read and validate one profile file; ProfileError (one line) on anything wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"profile {path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"profile {path}: not valid YAML{where}") from None
    return parse_profile(data, f"profile {path}")


def find_profile(profiles_dir: str | Path, device_slug: str) -> Path | None:
    """`profiles_dir/<slug>.yaml` if it exists (one profile per device slug)."""
    path = profile_path(profiles_dir, device_slug)
    return path if path.is_file() else None


# --- applying one ---------------------------------------------------------------------------------------------------


def model_family(model_id: str) -> str:
    """Profiles transfer between models of the same shape: every CSM-1B checkpoint and `csm-1b-random` share one."""
    return "tiny" if model_id == "tiny-random" else "csm-1b"


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
        return {"status": self.status, "path": self.path, "slug": self.slug, "settings": self.settings,
                "message": self.message}  # fmt: skip


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
    from .identity import detect_device

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
        f"max_streams {s.max_streams}, first_chunk_frames {s.first_chunk_frames}{warning}"
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
