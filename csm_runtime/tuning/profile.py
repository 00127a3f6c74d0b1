"""The profile: what autotune measured on one device and the settings it chose, as `profiles/<slug>.yaml`.

One file per device slug (the slug table is `csm_common/gpus.py` and the file contract `csm_common/profiles.py`, both
shared with the control plane). Schema version 1: identity (device facts, driver, CUDA, package versions, model id and
revision, date), the rule and the settings it chose with the measurements behind them, and the full candidate table,
skipped and OOM rows included with their reasons, each measured row's rounds and their spread, int8 rows' divergence
from the unquantized weights, and the delivery check (the chosen setting served over HTTP, predicted vs delivered RTF
and TTFA). The profile's figures (`chosen.figures`) are what the server delivered, the sweep's prediction beside them. Fields added after the first files of version 1 have defaults, so those files still load. Loading
validates everything (pydantic, unknown keys rejected); a malformed file or another schema version is a
`ProfileError` with one clear line, never a half-applied profile.

Which profile a server uses, and how, is apply.py; the sweep that writes one is sweep.py, choice.py and build.py.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from csm_common.profiles import SCHEMA_VERSION, profile_filename

CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
Quantize = Literal["off", "int8"]
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
    """One candidate, timed with `batch` streams decoding together (one frame per stream per step), in `rounds`
    rounds interleaved with the other candidates."""

    frames_timed: int = Field(ge=1)  # over all rounds
    ms_per_frame_p50: float = Field(ge=0)
    ms_per_frame_p95: float = Field(ge=0)
    ms_per_frame_mean: float = Field(ge=0)
    rtf: float = Field(ge=0)  # median of the rounds' mean step time / 80 ms of audio: every stream of the batch
    ttfa_ms: dict[int, float]  # first_chunk_frames -> time to first audio of a request joining the busy batch,
    # as a client sees it: the rounds' median, plus the admission wait (below)
    prefill_ms: float = Field(ge=0)
    rounds: int = Field(default=1, ge=1)
    round_ms_per_frame: list[float] = Field(default_factory=list)  # each round's mean step time
    spread: float = Field(default=0.0, ge=0)  # (slowest - fastest round) / median round
    extra_rounds: int = Field(default=0, ge=0)  # rounds added because the first ones disagreed (spread past the limit)
    admission_wait_ms: float = Field(default=0.0, ge=0)  # a request joining a busy batch waits half a step on average
    peak_memory_mb: float | None = None
    memory_kind: Literal["cuda_max_allocated", "process_rss"]
    compile_s: float = Field(ge=0)
    warmup_s: float = Field(ge=0)
    cuda_graphs_active: bool


class Divergence(_Strict):
    """How far int8 weights move the model from the same dtype unquantized (greedy, same prompt)."""

    reference: str  # the unquantized setting compared with, e.g. `bfloat16/off/no-graphs`
    frames: int = Field(ge=1)
    codes_agreement: float = Field(ge=0, le=1)  # share of the frames x 32 greedy codes that are equal
    logit_cosine: float = Field(ge=-1, le=1)  # codebook-0 logits after the prompt, cosine similarity
    within_bound: bool  # both meet the rule's bound; the rule never picks a row where this is false


class Candidate(_Strict):
    id: str  # `bfloat16/default/graphs/b8`, `bfloat16+int8/default/graphs/b8`
    dtype: Literal["float32", "bfloat16", "float16"]
    quantize: Quantize = "off"
    compile: CompileMode
    cuda_graphs: bool
    batch: int = Field(ge=1)
    status: Status
    reason: str | None = None  # why skipped / OOM / failed
    measurement: Measurement | None = None
    divergence: Divergence | None = None  # int8 rows

    @model_validator(mode="after")
    def _consistent(self) -> Candidate:
        if (self.status == "measured") != (self.measurement is not None):
            raise ValueError(f"candidate {self.id}: status {self.status} but measurement is {self.measurement!r:.20}")
        if self.status != "measured" and not self.reason:
            raise ValueError(f"candidate {self.id}: status {self.status} needs a reason")
        return self

    @property
    def setting(self) -> tuple[str, str, bool, str]:
        """The line this candidate belongs to on the plot: everything but the batch."""
        return (self.dtype, self.compile, self.cuda_graphs, self.quantize)


# --- the choice ---------------------------------------------------------------------------------------------------


class Rule(_Strict):
    rtf_max: float = Field(gt=0)  # real time with headroom
    ttfa_target_ms: float = Field(gt=0)
    text: str
    min_codes_agreement: float = Field(default=0.9, ge=0, le=1)  # int8's bound (Divergence)
    min_logit_cosine: float = Field(default=0.995, ge=-1, le=1)


class ChosenSettings(_Strict):
    """Exactly the RuntimeSettings fields a profile sets; everything else keeps its own source."""

    dtype: Literal["float32", "bfloat16", "float16"]
    compile: CompileMode
    cuda_graphs: bool
    max_streams: int = Field(ge=1)
    first_chunk_frames: int = Field(ge=1)
    quantize: Quantize = "off"

    def overrides(self) -> dict[str, Any]:
        return self.model_dump()


class Predicted(_Strict):
    rtf: float = Field(ge=0)
    ttfa_ms: float = Field(ge=0)


class Figures(_Strict):
    """What the profile states its setting delivers: the server's own figures over HTTP when the delivery check ran
    (`source: delivered`), the sweep's when it did not (`source: sweep`); the sweep's figures beside them."""

    source: Literal["delivered", "sweep"]
    streams: int = Field(ge=1)  # concurrent requests the figures hold for (the chosen max_streams)
    first_chunk_frames: int = Field(ge=1)
    rtf: float = Field(ge=0)  # wall seconds per second of audio, for every one of the streams
    ttfa_ms: float = Field(ge=0)  # request sent -> first audio, a request joining the busy server
    within_rule: bool  # rtf <= rule.rtf_max and ttfa_ms <= rule.ttfa_target_ms
    predicted: Predicted  # the sweep's figures for the same setting


class Choice(_Strict):
    candidate: str
    settings: ChosenSettings
    realtime: bool  # False: nothing met the rule, the fastest single stream was kept so the server still runs
    why: str
    figures: Figures | None = None  # None in files written before figures were recorded
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
    rounds: int = 1
    quantize: list[str] = Field(default_factory=lambda: ["off"])
    load_avg: list[float] | None = None  # the machine's 1/5/15-minute load averages when the sweep ended


class Delivery(_Strict):
    """The chosen setting served by the real server and measured through its HTTP API: what a client gets, beside
    what the sweep predicted. `ok` is false when either error passes `tolerance`; autotune then measures again, and
    the delivered figures are the profile's either way (a noisy machine never fails a provision)."""

    ok: bool
    tolerance: float = Field(gt=0)
    streams: int = Field(ge=1)  # concurrent requests (the chosen max_streams): the probe joins streams - 1 others
    rounds: int = Field(ge=1)
    frames_per_request: int = Field(ge=1)
    first_chunk_frames: int = Field(ge=1)
    predicted_rtf: float = Field(ge=0)
    delivered_rtf: float = Field(ge=0)  # median over every round of the probe's (last byte - first byte) / audio
    # after its first read
    rtf_error: float  # delivered / predicted - 1
    predicted_ttfa_ms: float = Field(ge=0)
    delivered_ttfa_ms: float = Field(ge=0)  # median over rounds: request sent -> first audio byte
    ttfa_error: float
    ttfa_slack_ms: float = Field(default=0.0, ge=0)  # TTFA differences this small pass whatever the tolerance
    round_rtf: list[float] = Field(default_factory=list)
    round_ttfa_ms: list[float] = Field(default_factory=list)
    attempts: int = Field(default=1, ge=1)  # measured again while prediction and delivery or the rounds disagree
    earlier: list[str] = Field(default_factory=list)  # why each attempt before the last one was measured again
    reason: str | None = None  # how delivery and prediction differ, when not ok
    rtf_spread: float = Field(default=0.0, ge=0)  # (slowest - fastest round) / median, over every round
    ttfa_spread: float = Field(default=0.0, ge=0)
    unsettled: str | None = None  # why the last attempt still disagreed when attempts or the time budget ran out


class Profile(_Strict):
    schema_version: Literal[1]
    slug: str = Field(min_length=1)
    identity: Identity
    rule: Rule
    chosen: Choice
    sweep: SweepInfo
    candidates: list[Candidate] = Field(min_length=1)
    plot: str | None = None  # the PNG beside this file
    delivery: Delivery | None = None  # None: the check was not run (autotune --no-check)

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
    return Path(profiles_dir) / profile_filename(slug)


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
