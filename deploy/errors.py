"""The control plane's exception types. `cli.py` maps each to a one-line message; nothing else prints errors."""

from __future__ import annotations


class DeployError(Exception):
    """Base class: the message is already a sentence fit for the operator."""


class UsageError(DeployError):
    """Bad input from the command line (price, ID, option combination)."""


class NotFoundError(DeployError):
    """No ledger row or instance with that ID."""


class NoOffersError(DeployError):
    """The search found nothing that matches, or every offer was tried and failed."""


class OfferUnavailableError(DeployError):
    """The provider refused to rent this offer (taken meanwhile); nothing was rented, try the next one."""


class RequestRefusedError(DeployError):
    """The provider refused a rent for a reason every other offer would meet too (no credit, bad arguments, too many
    requests for too long): the search stops at once with the provider's words."""


class StepFailedError(DeployError):
    """A provision step failed; `step` names it, `retry_next_offer` says whether another box may help."""

    def __init__(self, step: str, message: str, *, retry_next_offer: bool = True):
        super().__init__(f"step {step!r} failed: {message}")
        self.step = step
        self.retry_next_offer = retry_next_offer


class ProvisionCancelled(DeployError):
    """Another thread asked a provision to stop (Ctrl-C during a fleet provision); it rolled back what it rented."""


class CleanupFailedError(DeployError):
    """Destroying what this attempt rented failed; the message names the `deploy teardown` command to run."""


class RemoteError(DeployError):
    """SSH did not answer in time, a command failed or timed out, a checksum did not match."""


class HostKeyMismatchError(RemoteError):
    """The box presented a host key different from the one pinned in the ledger."""


class ProviderError(DeployError):
    """The provider said no, or an instance did not reach the state we waited for; the message names the instance."""
