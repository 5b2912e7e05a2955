"""dhrd.serve.batcher on a real event loop and worker thread, with a model that is slow
on purpose (so that requests queue behind a running batch): the queue never holds more
than --max_queue_items and refuses past it; a request still queued at its deadline, or
whose client hung up, leaves the queue before the model sees it; a drain finishes what
was admitted and refuses the rest."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from dhrd.serve.batcher import Batcher, Disconnected, Refused, Throughput


class SlowModel:
    """Probability of "long" = len(text) / 10, ``delay`` seconds a batch; records batches."""

    def __init__(self, delay: float = 0.2):
        self.delay, self.batches, self.lock = delay, [], threading.Lock()

    def __call__(self, texts):
        with self.lock:
            self.batches.append(list(texts))
        time.sleep(self.delay)
        p = torch.tensor([min(len(t), 10) / 10 for t in texts])
        return torch.stack([1 - p, p], -1)

    def seen(self) -> set[str]:
        return {t for b in self.batches for t in b}


async def started(batcher: Batcher):
    task = asyncio.create_task(batcher.run())
    await asyncio.sleep(0)
    return task


async def outcome(coro):
    try:
        return await coro
    except (Refused, Disconnected) as e:
        return e


def test_queue_is_bounded_and_refuses_with_retry_after():
    async def main():
        model = SlowModel(0.2)
        b = Batcher(model, max_batch_size=2, max_wait_s=0.0, max_queue_items=4)
        task = await started(b)
        first = asyncio.create_task(b.classify(["a", "bb"]))  # runs at once
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(outcome(b.classify([f"q{i}", "x" * i]))) for i in range(2)]
        await asyncio.sleep(0.01)
        assert b.queued_items == 4
        with pytest.raises(Refused) as e:
            await b.classify(["one more"])
        assert e.value.status == 503 and e.value.reason == "queue_full" and e.value.retry_after_s >= 1
        assert "4 items queued, room for 0 (--max_queue_items 4)" in e.value.message
        got = await first
        assert got[:, 1].tolist() == pytest.approx([0.1, 0.2])
        for i, q in enumerate(await asyncio.gather(*queued)):
            assert q[:, 1].tolist() == pytest.approx([0.2, min(i, 10) / 10])
        assert b.queued_items == 0 and b.in_flight == 0
        assert "one more" not in model.seen()
        task.cancel()
        b.close()

    asyncio.run(main())


def test_a_request_queued_past_its_deadline_leaves_the_queue():
    async def main():
        model = SlowModel(0.3)
        b = Batcher(model, max_batch_size=1, max_wait_s=0.0, max_queue_items=8, request_timeout_s=0.1)
        task = await started(b)
        running = asyncio.create_task(b.classify(["runs"]))
        await asyncio.sleep(0.05)
        late = await outcome(b.classify(["late", "later"]))
        assert isinstance(late, Refused) and late.status == 504 and "not started within 0.1 s" in late.message
        assert b.queued_items == 0
        assert (await running).shape == (1, 2)
        await asyncio.sleep(0.4)  # the worker is free again: nothing of the late request runs
        assert model.seen() == {"runs"}
        task.cancel()
        b.close()

    asyncio.run(main())


def test_a_request_already_running_at_its_deadline_is_answered():
    async def main():
        model = SlowModel(0.3)
        b = Batcher(model, max_batch_size=4, max_wait_s=0.0, max_queue_items=8, request_timeout_s=0.1)
        task = await started(b)
        got = await b.classify(["xxxxx"])  # in the batch before the deadline
        assert got[0, 1].item() == pytest.approx(0.5)
        task.cancel()
        b.close()

    asyncio.run(main())


def test_a_client_that_hangs_up_frees_its_items_before_the_model_sees_them():
    async def main():
        model = SlowModel(0.3)
        b = Batcher(model, max_batch_size=1, max_wait_s=0.0, max_queue_items=8)
        task = await started(b)
        running = asyncio.create_task(b.classify(["runs"]))
        await asyncio.sleep(0.05)
        hung_up = asyncio.get_running_loop().create_future()
        gone = asyncio.create_task(outcome(b.classify(["gone"], disconnected=lambda: hung_up)))
        await asyncio.sleep(0.05)
        assert b.queued_items == 1
        hung_up.set_result(None)
        assert isinstance(await gone, Disconnected) and b.queued_items == 0
        await running
        await asyncio.sleep(0.4)
        assert model.seen() == {"runs"}
        task.cancel()
        b.close()

    asyncio.run(main())


def test_drain_finishes_the_admitted_and_refuses_the_new():
    async def main():
        model = SlowModel(0.1)
        b = Batcher(model, max_batch_size=1, max_wait_s=0.0, max_queue_items=16)
        task = await started(b)
        admitted = [asyncio.create_task(b.classify(["x" * i])) for i in range(1, 5)]
        await asyncio.sleep(0.01)
        assert await b.drain(5.0) is True
        assert [round(r[0, 1].item(), 3) for r in await asyncio.gather(*admitted)] == [0.1, 0.2, 0.3, 0.4]
        with pytest.raises(Refused) as e:
            await b.classify(["new"])
        assert (e.value.status, e.value.reason) == (503, "draining")
        task.cancel()
        b.close()

    asyncio.run(main())


def test_drain_timeout_refuses_what_is_still_queued():
    async def main():
        model = SlowModel(0.2)
        b = Batcher(model, max_batch_size=1, max_wait_s=0.0, max_queue_items=16)
        task = await started(b)
        admitted = [asyncio.create_task(outcome(b.classify([f"t{i}"]))) for i in range(6)]
        await asyncio.sleep(0.01)
        assert await b.drain(0.3) is False
        results = await asyncio.gather(*admitted)
        done = [r for r in results if isinstance(r, torch.Tensor)]
        refused = [r for r in results if isinstance(r, Refused)]
        assert 1 <= len(done) <= 3 and len(done) + len(refused) == 6
        assert all(r.status == 503 and "--drain_timeout_s 0.3" in r.message for r in refused)
        assert b.queued_items == 0 and b.in_flight == 0
        task.cancel()
        b.close()

    asyncio.run(main())


def test_throughput_counts_the_last_window_only():
    t = Throughput(window_s=10)
    t.add(50, now=100.0)
    t.add(30, now=105.0)
    assert t.rate(now=106.0) == pytest.approx(8.0)
    assert t.rate(now=112.0) == pytest.approx(3.0)
