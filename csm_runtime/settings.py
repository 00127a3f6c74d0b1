"""Runtime settings: one dataclass with defaults, overridden by a YAML file, then by `CSM_*` environment variables,
then by explicit command-line options (and, for `serve`, the autotune profile between the last two).

Every knob of the data plane lives here so that `csm-runtime serve --show-config` prints the whole truth, and the
autotune profile can set exactly these names. Parsing is csm_common/envconfig.py, shared with the control plane:
`CSM_MAX_STREAMS=8` sets `max_streams`, booleans read 1/0, true/false, yes/no, on/off, and a `CSM_*` variable that names
no setting is an error (a typo must not leave a setting at its default).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from csm_common.envconfig import ConfigError, from_mapping
from csm_common.envconfig import from_env as env_values

ENV_PREFIX = "CSM_"
SettingsError = ConfigError  # a setting that cannot be parsed or names nothing: the commands print it on one line


@dataclass
class RuntimeSettings:
    # model
    model: str = "sesame/csm-1b"  # `tiny-random`, `csm-1b-random`, a Hugging Face id or a local path
    revision: str | None = None
    # a file holding the Hub token for a gated checkpoint (never the token itself); None: the Hub's own lookup
    # (HF_TOKEN, then the file `hf auth login` wrote)
    hf_token_file: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    mimi_weights: str = "auto"  # auto (random for *-random, else kyutai's Mimi via the HF cache) | random | PATH
    max_seq_len: int = 2048  # backbone KV cache length per slot: context + request text + generated frames
    init_seed: int = 0  # weights seed for the *-random models
    cpu_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    # optimisations (the profile chooses these)
    compile: str = "off"  # off | default | reduce-overhead | max-autotune-no-cudagraphs
    cuda_graphs: bool = False
    quantize: str = "off"  # off | int8 (weight-only, decoder layers: never on unless a profile or you choose it)
    cpu_linear: str = "auto"  # auto (oneDNN packed weights when batching in float32 on a CPU) | onednn | mkl
    max_streams: int = 4  # streams batched in one decode step
    # generation
    max_audio_ms: int = 20_000
    first_chunk_frames: int = 2
    chunk_frames: int = 4
    temperature: float = 0.9
    topk: int = 50
    max_context_frames: int = 400
    # backbone KV of context prefixes (a voice's reference, a conversation's turns) kept for reuse; 0 disables
    prefix_cache_mb: int = 512
    # server
    host: str = "127.0.0.1"
    port: int = 8000
    token_file: str | None = None
    # TLS (any non-loopback bind serves only HTTPS): your own certificate and key (uvicorn's names), or, without
    # them, a self-signed certificate kept in `tls_dir` for this machine's addresses, 127.0.0.1 and `ssl_san`
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_san: tuple[str, ...] = ()  # extra names or addresses the self-signed certificate covers (a public IP)
    tls_dir: str = "tls"
    profile: str = "auto"  # auto | off | PATH
    profiles_dir: str = "profiles"
    voices_dir: str | None = None
    # uploaded voices (POST /v1/voices) are kept in `<voices_dir>/uploaded`, or `<voice_store_dir>/uploaded` when
    # voices_dir is unset; each one's Mimi codes and transcript, files 0600
    voice_store_dir: str = "~/csm-deploy/voices"
    voice_upload_max_bytes: int = 10 << 20  # a larger upload gets 413 before it is read
    max_voices: int = 100  # uploaded voices kept at once (the YAML voices do not count)
    queue_size: int = 16
    request_timeout_s: float = 300.0
    # a connection gets this long to send a request's headers (from its start, or from the previous response), and
    # a request this long to send its body; then 408 or the connection is closed (server/connection_guard.py)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    shutdown_grace_s: float = 30.0  # on SIGTERM, running streams get this long to finish, then are cancelled
    warmup_text: str = "Warming up."
    # conversations (`conversation` in a speech request): kept in memory, dropped after this long unused, and the
    # least recently used first beyond these bounds
    conversation_ttl_s: float = 1800.0
    max_conversations: int = 1000
    conversations_max_mb: int = 256

    def replace(self, **changes: Any) -> RuntimeSettings:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_overrides(settings: RuntimeSettings, values: Mapping[str, Any], source: str) -> RuntimeSettings:
    """`values` (field name -> value) over `settings`, each parsed to its field's type; unknown names raise."""
    return settings.replace(**from_mapping(RuntimeSettings, values, source))


def from_env(settings: RuntimeSettings, environ: Mapping[str, str] | None = None) -> RuntimeSettings:
    """`CSM_MAX_STREAMS=8` overrides `max_streams`. Unknown `CSM_*` names are an error, not silently ignored."""
    environ = os.environ if environ is None else environ
    return settings.replace(**env_values(RuntimeSettings, ENV_PREFIX, environ))


def from_yaml(settings: RuntimeSettings, path: str | Path) -> RuntimeSettings:
    """A YAML mapping of settings over `settings`; OSError when the file cannot be read."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        raise SettingsError(f"{path}: not valid YAML") from None
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
