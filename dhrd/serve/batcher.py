"""Batching across requests, with admission control: the items of concurrent requests
share model batches; the queue in front of the model is bounded, so a burst larger
than the model can serve is refused at once (503, retry later) instead of growing
memory and latency without limit; a request leaves the queue at its deadline or when
its client hangs up, before it costs the model anything; a drain finishes what was
admitted and refuses the rest."""

from __future__ import annotations

import asyncio
import math
import sys
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


class ModelError(Exception):
    """The model raised on a batch: every request in it gets a 500."""


class Refused(Exception):
    """A request the server will not run now; ``status`` 503 (retry after
    ``retry_after_s``) or 504 (its deadline passed while queued)."""

    def __init__(self, status: int, reason: str, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.retry_after_s = status, reason, message, retry_after_s


class Disconnected(Exception):
    """The client hung up while its request waited: its queued items were withdrawn."""


QUEUED, BATCHED, WITHDRAWN = "queued", "batched", "withdrawn"


@dataclass(eq=False)
class _Chunk:
    texts: list[str]
    future: asyncio.Future
    state: str = QUEUED


class Throughput:
    """Items per second over the batches that ended in the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 10.0):
        self.window_s, self._ends = window_s, deque()

    def add(self, items: int, now: float | None = None) -> None:
        self._ends.append((time.monotonic() if now is None else now, items))

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._ends and self._ends[0][0] < now - self.window_s:
            self._ends.popleft()
        return sum(n for _, n in self._ends) / self.window_s


class Batcher:
    """A batch takes whole request chunks (a request over ``max_batch_size`` items is cut
    into chunks) until it is full or ``max_wait_s`` has passed since its first chunk. One
    worker thread runs the model, so batches never compete for the cores and the event
    loop stays free to admit, refuse and answer. ``queued_items`` counts the items
    admitted but not yet in a running batch; it never exceeds ``max_queue_items``."""

    def __init__(self, predict, max_batch_size: int, max_wait_s: float, max_queue_items: int,
                 request_timeout_s: float | None = None, on_batch: Callable[[int, float], None] | None = None):
        self.predict, self.max_batch_size, self.max_wait_s = predict, max_batch_size, max_wait_s
        self.max_queue_items, self.request_timeout_s, self.on_batch = max_queue_items, request_timeout_s, on_batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="dhrd-model")
        self.queued_items = 0
        self.in_flight = 0            # admitted requests not yet answered
        self.accepting = True         # False once draining
        self.throughput = Throughput()
        self._queue: deque[_Chunk] = deque()
        self._held: _Chunk | None = None  # the chunk that did not fit the previous batch
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    # -- admission ------------------------------------------------------------------

    def retry_after_s(self) -> int:
        """Seconds until the queue has drained at the recent rate (1..30)."""
        rate = self.throughput.rate()
        return 1 if rate <= 0 else max(1, min(30, math.ceil(self.queued_items / rate)))

    def _admit(self, n: int) -> None:
        if not self.accepting:
            raise Refused(503, "draining", "the server is shutting down: retry on another replica", 1)
        if self.queued_items + n > self.max_queue_items:
            wait = self.retry_after_s()
            raise Refused(503, "queue_full", f"overloaded: {self.queued_items} items queued, room for "
                                             f"{self.max_queue_items - self.queued_items} (--max_queue_items "
                                             f"{self.max_queue_items}); retry after {wait} s", wait)

    async def classify(self, texts: list[str], arrived: float | None = None,
                       disconnected: Callable[[], Awaitable] | None = None):
        """Class probabilities [len(texts), C] in input order. Refused (503) when the queue
        has no room; Refused (504) when ``request_timeout_s`` after ``arrived`` (loop time;
        default now) any of its items is still queued; Disconnected when
        ``disconnected()`` (made only once admitted) completes first."""
        import torch

        self._admit(len(texts))
        loop = asyncio.get_running_loop()
        timeout_s = None
        if self.request_timeout_s is not None:
            timeout_s = max(0.0, (loop.time() if arrived is None else arrived) + self.request_timeout_s - loop.time())
        n = self.max_batch_size
        chunks = [_Chunk(texts[i:i + n], loop.create_future()) for i in range(0, len(texts), n)]
        self._queue.extend(chunks)
        self.queued_items += len(texts)
        self.in_flight += 1
        self._idle.clear()
        self._wake.set()
        done = asyncio.gather(*(c.future for c in chunks), return_exceptions=True)
        try:
            parts = await self._outcome(done, chunks, timeout_s, disconnected)
        finally:
            self._withdraw(chunks)
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        return torch.cat(parts)

    async def _outcome(self, done, chunks, timeout_s, disconnected):
        watch = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            finished, _ = await asyncio.wait([done] + ([watch] if watch else []), timeout=timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watch is not None and not watch.done():
                watch.cancel()
        if done in finished:
            return done.result()
        if watch is not None and watch in finished:
            raise Disconnected()
        if any(c.state == QUEUED for c in chunks):
            raise Refused(504, "deadline", f"not started within {self.request_timeout_s:g} s "
                                           f"(--request_timeout_s); {self.queued_items} items were queued")
        return await done  # all its items are in a running batch: answered within it

    def _withdraw(self, chunks: list[_Chunk]) -> None:
        """Chunks of an answered, refused or abandoned request that are still queued
        leave the queue (the model never sees them) and stop counting against it."""
        for c in chunks:
            if c.state != QUEUED:
                continue
            c.state = WITHDRAWN
            self.queued_items -= len(c.texts)
            if c is self._held:
                self._held = None
            elif c in self._queue:  # else: in the batch being gathered, which skips it
                self._queue.remove(c)
            if not c.future.done():
                c.future.cancel()

    # -- draining -----------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait up to ``timeout_s`` for the admitted ones; any still
        queued then get a 503. True when everything admitted was answered in time."""
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            error = Refused(503, "draining", f"the server shut down before this request ran "
                                             f"(--drain_timeout_s {timeout_s:g}): retry on another replica", 1)
            for c in [self._held, *self._queue]:
                if c is not None and c.state == QUEUED and not c.future.done():
                    c.future.set_exception(error)
            return False

    # -- the worker -------------------------------------------------------------------------

    async def _pop(self, until: float | None) -> _Chunk | None:
        """The next queued chunk, waiting until loop time ``until`` (None: for ever)."""
        loop = asyncio.get_running_loop()
        while not self._queue:
            self._wake.clear()
            remaining = None if until is None else until - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        return self._queue.popleft()

    async def _next_batch(self) -> list[_Chunk]:
        loop = asyncio.get_running_loop()
        first = self._held or await self._pop(None)
        self._held = None
        batch, size = [first], len(first.texts)
        until = loop.time() + self.max_wait_s
        while size < self.max_batch_size:
            chunk = await self._pop(until)  # what is queued already joins at once, even past the wait
            if chunk is None:
                break
            if size + len(chunk.texts) > self.max_batch_size:
                self._held = chunk
                break
            batch.append(chunk)
            size += len(chunk.texts)
        live = [c for c in batch if c.state == QUEUED and not c.future.done()]
        for c in live:
            c.state = BATCHED
            self.queued_items -= len(c.texts)
        return live

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            texts = [t for c in batch for t in c.texts]
            t0 = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.executor, self.predict, texts)
            except Exception as e:  # noqa: BLE001 - the requests get a 500; the server keeps serving
                traceback.print_exc(file=sys.stderr)
                error = ModelError(f"the model failed on this batch: {type(e).__name__}: {e}")
                for c in batch:
                    if not c.future.done():
                        c.future.set_exception(error)
                continue
            self.throughput.add(len(texts))
            if self.on_batch is not None:
                self.on_batch(len(texts), time.perf_counter() - t0)
            start = 0
            for c in batch:
                if not c.future.done():
                    c.future.set_result(probs[start:start + len(c.texts)])
                start += len(c.texts)

    async def warm_up(self, texts: list[str]) -> None:
        """One batch through the worker thread, as requests will run (``/ready`` waits on it)."""
        await asyncio.get_running_loop().run_in_executor(self.executor, self.predict, texts)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
