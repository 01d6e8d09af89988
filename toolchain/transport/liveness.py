"""Dead-peer detection for an SSH connection: keep-alives that want an answer.

paramiko's own keep-alive only sends, so a stalled link (a peer that stopped answering but never
closed) goes unnoticed and every read on it waits forever. This is OpenSSH's ServerAliveInterval /
ServerAliveCountMax instead: every `interval` seconds a `keepalive@openssh.com` request that wants a
reply (OpenSSH and dropbear both answer it, with a failure, which is an answer); none within
`interval * count` seconds closes the connection, which ends every wait on it at once.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paramiko

KEEPALIVE_REQUEST = "keepalive@openssh.com"


class PeerWatch:
    """Watches one paramiko transport from a daemon thread until `stop()` or until the peer is found dead."""

    def __init__(self, transport: "paramiko.Transport", interval: float, count: int) -> None:
        self.interval = max(interval, 0.2)
        self.count = max(count, 1)
        #: set when the peer stopped answering and the connection was closed for it
        self.dead = False
        self._transport = transport
        self._stopped = threading.Event()
        threading.Thread(target=self._watch, name="ssh-peer-watch", daemon=True).start()

    @property
    def silence_s(self) -> float:
        """How long the peer may stay silent before it is declared dead."""
        return self.interval * self.count

    def _probe(self) -> None:
        try:
            self._transport.global_request(KEEPALIVE_REQUEST, wait=True)
        except Exception:  # the connection went away under the probe: the watch ends with it
            pass

    def _watch(self) -> None:
        while not self._stopped.wait(self.interval):
            if not self._transport.is_active():
                return
            probe = threading.Thread(target=self._probe, name="ssh-keepalive", daemon=True)
            probe.start()
            probe.join(self.silence_s)
            if probe.is_alive() and not self._stopped.is_set():
                self.dead = True
                self._transport.close()
                return

    def stop(self) -> None:
        self._stopped.set()
