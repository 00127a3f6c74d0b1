"""What every command shares: options declared once (so a flag is spelled the same everywhere) and small helpers
to get settings, the ledger and a provider. Light imports only: every command module imports this one, and
`deploy --help` imports every command module."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Annotated

import typer

from deploy.errors import UsageError

if TYPE_CHECKING:
    from deploy.ledger import Ledger
    from deploy.providers import Provider
    from deploy.providers.records import SshHost
from csm_common.gpus import Gpu, resolve
from deploy.settings import DeploySettings, load_settings

Gpu_ = Annotated[str, typer.Option("--gpu", "-g", help="GPU alias: 4090, 3090, 5090, A100, H100, L40S, A6000, ...")]
OptionalGpu = Annotated[str | None, typer.Option("--gpu", "-g", help="GPU alias (4090, A100, ...); optional here")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Provider_ = Annotated[str, typer.Option("--provider", "-p", help="vast (rent), ssh (your own box), local (here).")]
MaxPrice = Annotated[str | None, typer.Option("--max-price", help="Highest price in USD per hour.", show_default=False)]
Disk = Annotated[float | None, typer.Option("--disk", help="Disk in GB [default: DEPLOY_DISK_GB].", show_default=False)]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Providers = Annotated[
    list[str] | None,
    typer.Option(
        "--provider", "-p", help="Only these providers [default: every one with credentials here + the ledger's]."
    ),
]
Fleet_ = Annotated[str, typer.Option("--fleet", help="Which fleet (see `deploy status`).")]
Interruptible = Annotated[
    bool,
    typer.Option(
        "--interruptible", help="Rent at a bid (vast's interruptible price): cheaper, stopped when someone outbids it."
    ),
]
Bid = Annotated[str | None, typer.Option("--bid", help="--interruptible: the bid in USD per hour.", show_default=False)]
BidOverMin = Annotated[
    str | None,
    typer.Option(
        "--bid-over-min",
        help="--interruptible: bid this many percent over the offer's minimum bid [default: 0].",
        show_default=False,
    ),
]
RentalId = Annotated[int, typer.Argument(help="Ledger ID of the rental (the ID column of `deploy status`).")]


@lru_cache(maxsize=1)
def settings() -> DeploySettings:
    return load_settings()


def gpu(alias: str | None) -> Gpu | None:
    return None if alias is None else resolve(alias)


def price(text: str | None) -> float | None:
    """A positive number of USD per hour, or a one-line UsageError."""
    if text is None:
        return None
    try:
        value = float(text.strip().lstrip("$"))
    except ValueError:
        raise UsageError(f"--max-price {text!r} is not a number (USD per hour, e.g. 0.45)") from None
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(f"--max-price must be a positive number of USD per hour, not {text!r}")
    return value


def number(name: str, text: str | None) -> float | None:
    """A finite number (`--bid 0.2`, `--bid-over-min 15%`), or a one-line UsageError; the range is checked by whoever
    takes it."""
    if text is None:
        return None
    try:
        value = float(text.strip().lstrip("$").rstrip("%"))
    except ValueError:
        raise UsageError(f"{name} {text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"{name} {text!r} is not a number")
    return value


def duration(name: str, text: str | None) -> float | None:
    """`90s`, `60m`, `2h` or plain seconds -> seconds; a one-line UsageError otherwise."""
    if text is None:
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    raw = text.strip().lower()
    scale = units.get(raw[-1:])
    number = raw[:-1] if scale else raw
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise UsageError(f"{name} {text!r} is not a duration (e.g. 90s, 60m, 2h)") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{name} must be a positive duration, not {text!r}")
    return value


def positive(name: str, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise UsageError(f"{name} must be positive, not {value!r}")
    return value


# The ledger (sqlite3) and the providers are imported when a command runs, not when `deploy --help` lists them.


def open_ledger() -> Ledger:
    from deploy.ledger import Ledger

    return Ledger(settings().ledger_path)


def provider(name: str, ssh: SshHost | None = None) -> Provider:
    from deploy.providers import make_provider

    return make_provider(name, settings(), ssh)
