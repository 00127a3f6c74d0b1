"""This machine, no SSH: a "rental" is a ledger row and a work dir under DEPLOY_HOME/local/<id>.

It lets the whole flow (and `make demo`) run on a laptop without a GPU or an account. `destroy` stops every process
the steps started there (LocalHost.start_detached pid files) and marks the work dir destroyed.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from deploy.errors import ProviderError
from deploy.providers.base import DirectAddress, Log, OfferQuery, Provider, RentRequest
from deploy.providers.records import Box, Offer, SshHost, State
from deploy.remote.local_host import LocalHost, free_port

if TYPE_CHECKING:
    from deploy.ledger import Ledger, Rental
    from deploy.settings import DeploySettings

_DESTROYED = ".destroyed"


def describe_machine() -> str:
    """The GPU nvidia-smi reports, else the CPU model: what the `local` offer says it is."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            if out:
                return out.splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU " + (platform.processor() or platform.machine())


class LocalProvider(Provider):
    name = "local"
    uses_ssh = False
    runs_here = True

    def __init__(self, home: Path, rate_usd_h: float = 0.0):
        self.root = Path(home) / "local"
        self.rate = rate_usd_h

    @classmethod
    def configured(cls, settings: DeploySettings) -> bool:
        return (settings.home_path / "local").is_dir()

    def workdir(self, provider_id: str) -> Path:
        return self.root / provider_id

    @classmethod
    def from_settings(cls, settings: DeploySettings, ssh: SshHost | None = None) -> LocalProvider:
        return cls(settings.home_path, rate_usd_h=settings.local_rate)

    def search(self, query: OfferQuery) -> list[Offer]:
        return [Offer(provider=self.name, id="this-machine", gpu_name=describe_machine(), price_usd_h=self.rate)]

    def rent(self, offer: Offer, request: RentRequest, on_created: Callable[[str], None] = lambda _id: None) -> str:
        pid = "local-" + uuid.uuid4().hex[:8]
        path = self.workdir(pid)
        path.mkdir(parents=True)
        (path / "label").write_text(request.label + "\n")
        on_created(pid)
        return pid

    def _box(self, provider_id: str) -> Box | None:
        path = self.workdir(provider_id)
        if not path.is_dir() or (path / _DESTROYED).exists():
            return None
        label = (path / "label").read_text().strip() if (path / "label").exists() else None
        return Box(self.name, provider_id, State.RUNNING, "running", label, price_usd_h=self.rate)

    def wait_ready(
        self, provider_id: str, *, deadline: float, poll_s: float, log: Log, seen: Callable[[Box], None] | None = None
    ) -> Box:
        box = self._box(provider_id)
        if box is None:
            raise ProviderError(f"local rental {provider_id} has no work dir")
        return box

    def destroy(self, provider_id: str, *, deadline: float, poll_s: float = 1.0) -> float | None:
        path = self.workdir(provider_id)
        if path.is_dir():
            LocalHost(path).stop_all()
            (path / _DESTROYED).touch()
        return None

    def list_owned(self, label_prefix: str) -> list[Box]:
        if not self.root.is_dir():
            return []
        boxes = [self._box(p.name) for p in sorted(self.root.iterdir())]
        return [b for b in boxes if b is not None and (b.label or "").startswith(label_prefix + ":")]

    def get(self, provider_id: str) -> Box | None:
        return self._box(provider_id)

    def default_server_port(self) -> int:
        return free_port()  # several local "boxes" share this machine's ports

    def direct_address(self, box: Box | None, port: int) -> DirectAddress | None:
        return DirectAddress("127.0.0.1", port, "127.0.0.1")

    def host(
        self,
        rental: Rental,
        settings: DeploySettings,
        ledger: Ledger,
        *,
        out: IO[str] | None = None,
        connect_timeout: float = 10,
    ) -> LocalHost:
        return LocalHost(self.workdir(str(rental.provider_id)), out=out)

    def open_host(
        self, rental: Rental, settings: DeploySettings, ledger: Ledger, *, timeout_s: float, poll_s: float, log: Log
    ) -> LocalHost:
        return self.host(rental, settings, ledger)

    def shell_command(self, rental: Rental, settings: DeploySettings, command: list[str] | None) -> list[str]:
        os.chdir(self.workdir(str(rental.provider_id)))
        return ["bash", "-c", shlex.join(command)] if command else [os.environ.get("SHELL", "bash")]
