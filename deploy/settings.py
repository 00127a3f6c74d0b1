"""Control-plane settings: one dataclass with defaults, overridden by `DEPLOY_*` environment variables.

`deploy --show-config` prints exactly this, so what the command does is never a mystery. No secret lives here:
the vast.ai API key stays with the vastai CLI (its env var or its own key file) and is only reported as present.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csm_common.envconfig import ConfigError, from_env

ENV_PREFIX = "DEPLOY_"
# A stock CUDA 12.4 PyTorch image, whose torch 2.6.0 meets the runtime pin, so bootstrap mode (deploy/provision/
# layout.py) installs only the light packages into a venv that sees it. A GPU family that needs a newer CUDA
# (csm_common/gpus.py `image`) starts from its own image when this default is in force.
DEFAULT_IMAGE = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime"


class SettingsError(ValueError):
    """A `DEPLOY_*` value that cannot be parsed, or a `DEPLOY_*` name that is no setting; the message names it."""


@dataclass(frozen=True)
class DeploySettings:
    home: str = "~/.csm-deploy"  # DEPLOY_HOME: the ledger, the SSH key and every other piece of local state
    label_prefix: str = "csm-deploy"  # every rental is labelled `<prefix>:<attempt>:<row>` so orphans can be found
    image: str = DEFAULT_IMAGE  # the container image rented boxes start from
    disk_gb: float = 40.0
    max_offers: int = 3  # offers tried in order before provision gives up
    max_price: float | None = None  # USD per hour
    min_reliability: float = 0.98
    min_cuda: float = 12.4
    min_inet_down: float = 200.0  # Mb/s: vast offers below this pull a multi-GB image for many minutes
    # rent -> `running`: vast pulls the image first ("typically 1-5 minutes"; large CUDA images on slow hosts take
    # far longer; SkyPilot waits 30 min). A box that can never run (error status, `unknown`) fails at once anyway.
    ready_timeout_s: float = 1800.0
    ssh_timeout_s: float = 180.0  # `running` -> SSH answers
    poll_interval_s: float = 5.0
    vast_timeout_s: float = 120.0  # one vastai CLI call
    vast_retry_s: float = 60.0  # how long a vastai call that failed on a 429/5xx/timeout keeps being retried
    # after a create starts, how long it may still rent a box: a `vastai create` outlives a killed `deploy`, and
    # vastai 1.9.1 sends a create up to 3 times, 120 s each, with waits of up to 60 s between (600 s with a margin)
    vast_create_window_s: float = 600.0
    ssh_user: str = "root"
    ssh_key: str | None = None  # private key; default <home>/id_ed25519, created on first use
    check_command: str = "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || uname -a"
    check_timeout_s: float = 60.0
    local_rate: float = 0.0  # USD per hour the `local` provider charges itself (for cost demos)
    remote_dir: str = "~/csm-deploy"  # where the runtime's files live on the box
    haproxy: str | None = None  # the fleet gateway's haproxy binary [default: `haproxy` on PATH, /usr/sbin/haproxy]
    interruptible_deadline_s: float = 600.0  # a mixed fleet's replica rents on demand when no bid box is up by then

    @property
    def home_path(self) -> Path:
        return Path(os.path.expanduser(self.home))

    @property
    def ledger_path(self) -> Path:
        return self.home_path / "ledger.sqlite3"

    @property
    def ssh_key_path(self) -> Path:
        return Path(os.path.expanduser(self.ssh_key)) if self.ssh_key else self.home_path / "id_ed25519"

    def replace(self, **changes: Any) -> DeploySettings:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ALSO_KNOWN = ("DEPLOY_DEBUG",)  # read by cli.main before settings exist: a traceback with each error


def load_settings(environ: Mapping[str, str] | None = None) -> DeploySettings:
    """Defaults, then `DEPLOY_<FIELD>` for every field (DEPLOY_HOME, DEPLOY_POLL_INTERVAL_S, ...). An unknown
    `DEPLOY_*` variable is a one-line error: a typo must not leave a setting at its default."""
    env = os.environ if environ is None else environ
    try:
        return DeploySettings(**from_env(DeploySettings, ENV_PREFIX, env, also_known=ALSO_KNOWN))
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
