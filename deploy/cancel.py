"""One way to cancel a command: a `CancelToken` that SIGINT, SIGTERM and SIGHUP set (`handle_signals`), that a
fleet hands to each replica's thread, and that the provision flow checks between steps and in its waits.

What signals do, in order:
  1st  sets the token. A provision step runs `interruptible`: its blocking calls (a remote command, an SSH dial)
       cannot all poll the token, so it is broken out of at once (`Interrupt`); a call `shielded` from that (a vastai
       create: its answer is the id of what it rented) finishes first and the next check stops the flow. Then the
       flow destroys what it rented, and a rollback is never interrupted by this signal.
  2nd  is reported: what the rollback is destroying, and that one more signal abandons it.
  3rd  abandons (`Abandon`, only where the command rolls back in this thread): the command ends at once, naming
       what may still bill and the `deploy teardown` that ends it.
A signal that first lands during a rollback is reported at once, so the next one abandons. The command exits with
128 + the first signal's number (130 INT, 143 TERM, 129 HUP) and its last line says what was left (`Interrupted`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from deploy.errors import ProvisionCancelled

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupt(BaseException):  # noqa: N818 - a control-flow signal like KeyboardInterrupt, not an error
    """Raised by the first signal inside an interruptible step (a BaseException: `except Exception` must not eat it)."""

    def __init__(self, signum: int | None):
        super().__init__(_name(signum))
        self.signum = signum


class Abandon(Interrupt):
    """Raised by the last signal: stop the rollback (or whatever runs) now."""


class Interrupted(ProvisionCancelled):
    """How a cancelled command ends: the message says what was rented and what, if anything, still bills."""

    def __init__(self, signum: int | None, outcome: str):
        super().__init__(outcome)
        self.signum = signum


def _name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "cancelled"


def _say(message: str) -> None:
    """From a signal handler: one raw write (a buffered stream may be mid-write in this same thread); a terminal that
    hung up must not stop the rollback."""
    with contextlib.suppress(OSError):
        os.write(2, f"› {message}\n".encode())


def _detach_terminal(fds: tuple[int, ...]) -> None:
    """A hung-up terminal fails every write (EIO), which would stop the rollback at its first log line: what went
    to it goes nowhere from now on. Pipes and files are left alone (the log and the last line still reach them)."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in fds:
            os.dup2(null, fd)
        os.close(null)


def _main() -> bool:
    return threading.current_thread() is threading.main_thread()


class CancelToken(threading.Event):
    """Set once; `signum` is the first signal that set it (None: set by code, e.g. a fleet's KeyboardInterrupt)."""

    def __init__(self, *, abandon: bool = True) -> None:
        super().__init__()
        self.signum: int | None = None
        self.abandonable = abandon  # False where the rollbacks run in other threads (a fleet): they always finish
        self._reported = False
        self._interruptible = 0  # depth, main thread only: signal handlers run there
        self._shielded = 0
        self._rollbacks: dict[int, str] = {}  # thread id -> what its rollback is destroying
        self.tty_fds: tuple[int, ...] = ()  # stdin/stdout/stderr that were a terminal when the handlers went in

    def cancel(self, signum: int | None = None) -> None:
        if not self.is_set():
            self.signum = signum
        self.set()

    def check(self, what: str) -> None:
        """A wait's look at the token: stop with ProvisionCancelled once it is set."""
        if self.is_set():
            raise ProvisionCancelled(what)

    def pause(self, seconds: float, what: str) -> None:
        """A wait's sleep that ends the moment the token is set."""
        if self.wait(seconds):
            raise ProvisionCancelled(what)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block the first signal breaks out of (`Interrupt`); elsewhere a signal only sets the token."""
        if not _main():
            yield
            return
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """A call that must finish even inside an interruptible block: the signal only sets the token."""
        if not _main():
            yield
            return
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1

    @contextlib.contextmanager
    def rolling_back(self, doing: str) -> Iterator[None]:
        """A rollback: signals are reported (with `doing`), the next one after a report abandons it."""
        key = threading.get_ident()
        self._rollbacks[key] = doing
        try:
            yield
        finally:
            self._rollbacks.pop(key, None)

    def on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            _detach_terminal(self.tty_fds)
        first = not self.is_set()
        self.cancel(signum)
        doing = "; ".join(list(self._rollbacks.values()))  # a copy: replicas' threads change it
        name = signal.Signals(signum).name
        if first and not doing:
            _say(f"{name}: stopping; what this command rented is destroyed before it ends")
            if self._interruptible and not self._shielded:
                raise Interrupt(signum)
            return
        can_abandon = self.abandonable and (not doing or threading.main_thread().ident in self._rollbacks)
        if not can_abandon:
            _say(f"rollback in progress: {doing or 'none yet'}; every rollback finishes before the command ends")
            return
        if not self._reported:
            self._reported = True
            what = f"rollback in progress: {doing}" if doing else "stopping: the current call ends, then the rollback"
            _say(f"{what}; press Ctrl-C again to abandon it")
            return
        raise Abandon(self.signum)


_installed: list[CancelToken] = []  # the token the signal handlers set now (innermost last)


def current() -> CancelToken | None:
    return _installed[-1] if _installed else None


def shielded() -> contextlib.AbstractContextManager[None]:
    """`CancelToken.shielded` of the installed token, if any (for calls below the flow: the vastai create)."""
    token = current()
    return token.shielded() if token is not None else contextlib.nullcontext()


@contextlib.contextmanager
def handle_signals(token: CancelToken | None = None, *, abandon: bool = True) -> Iterator[CancelToken]:
    """SIGINT, SIGTERM and SIGHUP set `token` for the length of the block; the previous handlers come back after."""
    token = token or CancelToken(abandon=abandon)
    if not _main():
        yield token
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    token.tty_fds = tuple(fd for fd in (0, 1, 2) if _isatty(fd))
    _installed.append(token)
    for s in SIGNALS:
        signal.signal(s, token.on_signal)
    try:
        yield token
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _installed.remove(token)


def pause(seconds: float, outcome: str) -> None:
    """A command's poll sleep that the installed token ends (SIGINT, SIGTERM, SIGHUP): `Interrupted`, whose message
    `outcome` says what the command leaves; a plain sleep where no handler is installed."""
    import time

    token = current()
    if token is None:
        time.sleep(seconds)
    elif token.wait(seconds):
        raise Interrupted(token.signum, outcome)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def ending(exc: BaseException) -> tuple[str, int] | None:
    """The last line and exit code of a command a signal ended (128 + the signal); None for other exceptions."""
    if not isinstance(exc, (Interrupted, Interrupt)):
        return None
    signum = exc.signum
    head = f"interrupted ({_name(signum)})" if signum else "cancelled"
    detail = str(exc) if isinstance(exc, Interrupted) else "abandoned; `deploy status` shows anything still billing"
    return f"{head}: {' '.join(detail.split())}", (128 + signum if signum else 1)
