"""Graceful shutdown of a real ``dhrd serve`` process (dhrd.serve.shutdown) with a real
signal while clients are in flight: every admitted request gets its answer (or, past
--drain_timeout_s, a 503); requests arriving during the drain and ``/ready`` get 503;
nothing hangs or is reset; the process exits 0. A second signal exits at once."""

from __future__ import annotations

import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve_helpers import POOL, Server, build_lean_dir, call, call_full, check_predictions, scrape


@pytest.fixture(scope="module")
def lean_dir(tmp_path_factory):
    return build_lean_dir(tmp_path_factory.mktemp("drain-lean"))


def slow_cmd(delay: float):
    def command(model_dir, *args):
        return [sys.executable, "-m", "tests.serve_slow", str(delay), str(model_dir), *map(str, args)]
    return command


def slow_server(lean_dir, tmp_path, delay: float, *args) -> Server:
    return Server(lean_dir, tmp_path / "serve.log", "--max_batch_size", 2, "--max_items", 2, "--max_wait_ms", 0,
                  "--max_queue_items", 64, *args, command=slow_cmd(delay)).wait_ready()


def wait_in_flight(port: int, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while scrape(port)["dhrd_requests_in_flight"] < n:
        assert time.monotonic() < deadline, scrape(port)
        time.sleep(0.02)


def in_flight(port: int, bodies: list[dict]):
    """The requests sent concurrently on their own connections, and all admitted: (pool, futures)."""
    pool = ThreadPoolExecutor(len(bodies))
    futures = [pool.submit(call, port, "POST", "/v1/classify", b, 60) for b in bodies]
    wait_in_flight(port, len(bodies))
    return pool, futures


def test_sigterm_drains_admitted_requests_and_exits_0(lean_dir, tmp_path):
    from dhrd.serve.classifier import LeanClassifier

    server = slow_server(lean_dir, tmp_path, 0.3, "--drain_timeout_s", 30)
    try:
        picks = [[i % len(POOL), (3 * i + 1) % len(POOL)] for i in range(8)]
        pool, futures = in_flight(server.port, [{"texts": [POOL[i] for i in p]} for p in picks])  # 8 batches to go
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert server.proc.poll() is None
        assert call(server.port, "GET", "/ready") == (503, {"ready": False, "reason": "draining"})
        status, reply, headers = call_full(server.port, "POST", "/v1/classify", {"texts": ["too late"]})
        assert status == 503 and "shutting down" in reply["error"] and headers["connection"] == "close"
        want = LeanClassifier.load(lean_dir).predict(POOL)
        for p, f in zip(picks, futures):
            status, reply = f.result(timeout=60)  # no reset, no hang
            assert status == 200, reply
            check_predictions(reply, want[p])
        pool.shutdown()
        assert server.proc.wait(timeout=30) == 0
        out = server.output()
        assert "SIGTERM: draining" in out and "drained; exiting" in out and "Traceback" not in out, out
    finally:
        server.stop()


def test_past_the_drain_timeout_queued_requests_get_503(lean_dir, tmp_path):
    server = slow_server(lean_dir, tmp_path, 0.4, "--drain_timeout_s", 0.5)
    try:
        pool, futures = in_flight(server.port, [{"texts": [POOL[i]]} for i in range(8)])
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        replies = [f.result(timeout=60) for f in futures]
        pool.shutdown()
        assert server.proc.wait(timeout=60) == 0 and time.monotonic() - t0 < 30
        statuses = sorted(s for s, _ in replies)
        assert set(statuses) == {200, 503} and statuses.count(200) <= 4, statuses
        assert all("--drain_timeout_s 0.5" in r["error"] for s, r in replies if s == 503)
        assert "timed out: queued requests got 503" in server.output()
    finally:
        server.stop()


def test_a_second_signal_exits_at_once(lean_dir, tmp_path):
    server = slow_server(lean_dir, tmp_path, 1.0, "--drain_timeout_s", 60)
    try:
        pool, futures = in_flight(server.port, [{"texts": [POOL[i]]} for i in range(6)])
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 128 + signal.SIGTERM and time.monotonic() - t0 < 5
        assert "SIGTERM again: exiting now" in server.output()
        for f in futures:  # the forced exit drops them: an error at once, not a hang
            with pytest.raises(OSError):
                f.result(timeout=30)
        pool.shutdown()
    finally:
        server.stop()

