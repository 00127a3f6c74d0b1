"""Runtime settings: one dataclass with defaults, overridden by a profile/YAML file, then by `CSM_*` env vars.

Every knob of the data plane lives here so that `csm-runtime serve --show-config` prints the whole truth, and the
autotune profile can set exactly these names.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


class SettingsError(ValueError):
    """A setting that cannot be parsed or is out of range; the message names it."""


@dataclass
class RuntimeSettings:
    # model
    model: str = "sesame/csm-1b"  # `tiny-random`, `csm-1b-random`, a Hugging Face id or a local path
    revision: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    mimi_weights: str = "auto"  # auto (random for *-random, else kyutai's Mimi via the HF cache) | random | PATH
    max_seq_len: int = 2048  # backbone KV cache length per slot: context + request text + generated frames
    init_seed: int = 0  # weights seed for the *-random models
    cpu_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    # optimisations (the profile chooses these)
    compile: str = "off"  # off | default | reduce-overhead | max-autotune-no-cudagraphs
    cuda_graphs: bool = False
    max_streams: int = 4  # streams batched in one decode step
    # generation
    max_audio_ms: int = 20_000
    first_chunk_frames: int = 2
    chunk_frames: int = 4
    temperature: float = 0.9
    topk: int = 50
    max_context_frames: int = 250
    # server
    host: str = "127.0.0.1"
    port: int = 8000
    token_file: str | None = None
    profile: str = "auto"  # auto | off | PATH
    profiles_dir: str = "profiles"
    voices_dir: str | None = None
    queue_size: int = 16
    request_timeout_s: float = 300.0
    shutdown_grace_s: float = 30.0  # on SIGTERM, running streams get this long to finish, then are cancelled
    warmup_text: str = "Warming up."

    def replace(self, **changes: Any) -> RuntimeSettings:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(RuntimeSettings)}


def _coerce(name: str, raw: Any) -> Any:
    """Parse one value to the type the dataclass declares (env vars arrive as strings)."""
    kind = str(_FIELDS[name].type)
    if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "") and "None" in kind):
        return None
    try:
        if kind.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"setting {name}: cannot parse {raw!r} as {kind}") from None


def apply_overrides(settings: RuntimeSettings, values: dict[str, Any], source: str) -> RuntimeSettings:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise SettingsError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    return settings.replace(**{k: _coerce(k, v) for k, v in values.items()})


def from_env(settings: RuntimeSettings, environ: dict[str, str] | None = None) -> RuntimeSettings:
    """`CSM_MAX_STREAMS=8` overrides `max_streams`. Unknown `CSM_*` names are an error, not silently ignored."""
    environ = os.environ if environ is None else environ
    values = {k[4:].lower(): v for k, v in environ.items() if k.startswith("CSM_")}
    values = {k: v for k, v in values.items() if k in _FIELDS}
    return apply_overrides(settings, values, "environment")


def from_yaml(settings: RuntimeSettings, path: str | Path) -> RuntimeSettings:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of settings")
    return apply_overrides(settings, data, str(path))


def load_settings(config_file: str | Path | None = None, **cli: Any) -> RuntimeSettings:
    """Defaults <- YAML file <- environment <- explicit CLI values (None means 'not given')."""
    settings = RuntimeSettings()
    if config_file:
        settings = from_yaml(settings, config_file)
    settings = from_env(settings)
    return apply_overrides(settings, {k: v for k, v in cli.items() if v is not None}, "command line")
