"""A TCP relay: accept on one address, connect each client to another, copy bytes both ways (TLS passes through).

The end-to-end box (netns_box.py) has a network of its own, so a server on this machine's 127.0.0.1 (the Hub
stand-in) is out of its reach. Two relays put the stand-in at the same address inside the box: one here from the
veth address to 127.0.0.1 (`Relay`, a thread), one inside the namespace from the box's 127.0.0.1 to the veth address
(`python -m tests.fakes.tcp_relay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT`, run under `ip netns exec`).
The box then sees `https://127.0.0.1:PORT` and `https://localhost:PORT`, as the tests on this machine do, and the
stand-in's certificate for those names still verifies.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=30)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


class Relay:
    """Accept on `listen` (host, port; port 0 picks one), relay each connection to `target`, in daemon threads."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.target = target
        self._thread = threading.Thread(target=self._accept, name="tcp-relay", daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=_serve, args=(client, self.target), daemon=True).start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def main(argv: list[str]) -> None:
    listen_host, listen_port, target_host, target_port = argv
    relays = [Relay((listen_host, int(listen_port)), (target_host, int(target_port))).start()]
    if listen_host == "127.0.0.1":  # `localhost` may resolve to ::1 first
        with contextlib.suppress(OSError):
            relays.append(Relay(("::1", int(listen_port)), (target_host, int(target_port))).start())
    print("listening", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
