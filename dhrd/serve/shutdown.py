"""Graceful shutdown for ``dhrd serve``, as orchestrators expect it (Kubernetes, Slurm,
systemd send SIGTERM, then SIGKILL after a grace period): the first SIGTERM or SIGINT
starts a drain (new requests and ``/ready`` get 503 while the port stays open, so load
balancers see the replica leave instead of connections being refused or reset; what was
admitted is finished within ``--drain_timeout_s``), then the server closes and the
process exits 0. A second signal exits at once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import uvicorn


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose first exit signal drains (``drain()``) before the usual
    shutdown. uvicorn alone would stop listening at once and, after shutting down,
    re-raise the signal (exit status -15 instead of 0)."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[bool]], prog: str):
        super().__init__(config)
        self.drain, self.prog = drain, prog
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame) -> None:  # called by Python between bytecodes, main thread
        name = signal.Signals(sig).name
        if self.draining or self._loop is None:
            print(f"{self.prog}: {name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + sig)
        self.draining = True
        print(f"{self.prog}: {name}: draining (no new requests; finishing those admitted)", file=sys.stderr,
              flush=True)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        try:
            finished = await self.drain()
            print(f"{self.prog}: drained{'' if finished else ' (timed out: queued requests got 503)'}; exiting",
                  file=sys.stderr, flush=True)
        finally:
            self.should_exit = True
