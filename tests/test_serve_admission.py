"""``dhrd serve``'s answer to overload, over a real socket (the app served by uvicorn in a
thread, a model slow on purpose): past --max_queue_items a 503 with Retry-After and a
JSON error; a request still queued at --request_timeout_s a 504 and its items never
reach the model; a client that hangs up frees its items; /ready waits for the warm-up;
every outcome is counted in /metrics (parsed with prometheus_client's parser)."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dhrd.serve.http import ServeConfig
from tests.serve_helpers import FakeModel, app_server, call, call_full, scrape


def test_overload_is_refused_with_503_and_counted():
    model = FakeModel(delay=0.4)
    cfg = ServeConfig(model_dir="fake", max_batch_size=2, max_items=2, max_queue_items=4, max_wait_ms=0)
    with app_server(model, cfg) as (port, _):
        model.batches.clear()
        bodies = [{"texts": ["x" * (1 + i % 10), "yy"]} for i in range(10)]  # 20 items; room for 2 + 4
        with ThreadPoolExecutor(10) as pool:
            replies = list(pool.map(lambda b: call_full(port, "POST", "/v1/classify", b), bodies))
        ok = [(b, r) for b, (s, r, _) in zip(bodies, replies) if s == 200]
        refused = [(r, h) for s, r, h in replies if s == 503]
        assert len(ok) + len(refused) == 10 and len(ok) >= 3 and len(refused) >= 3, [s for s, _, _ in replies]
        for body, reply in ok:
            assert [p["probs"]["long"] for p in reply["predictions"]] == \
                pytest.approx([min(len(t), 10) / 10 for t in body["texts"]])
        for reply, headers in refused:
            assert "overloaded" in reply["error"] and "(--max_queue_items 4)" in reply["error"]
            assert int(headers["retry-after"]) >= 1
        m = scrape(port)
    assert m["dhrd_refused_requests_total{reason=queue_full}"] == len(refused)
    assert m["dhrd_requests_total{status=503}"] == len(refused)
    assert m["dhrd_requests_total{status=200}"] == len(ok)
    assert m["dhrd_request_latency_seconds_count"] == len(ok)
    assert m["dhrd_items_total"] == 2 * len(ok) and m["dhrd_batch_size_items_count"] == len(model.batches)
    assert m["dhrd_batch_size_items_bucket{le=2.0}"] == len(model.batches)
    assert m["dhrd_batch_size_items_sum"] == 2 * len(ok)
    assert m["dhrd_queue_items"] == 0 and m["dhrd_requests_in_flight"] == 0 and m["dhrd_queue_limit_items"] == 4
    assert m["dhrd_ready"] == 1


def test_a_request_queued_past_its_deadline_gets_504_and_never_runs():
    model = FakeModel(delay=0.4)
    cfg = ServeConfig(model_dir="fake", max_batch_size=1, max_items=1, max_queue_items=8, max_wait_ms=0,
                      request_timeout_s=0.6)
    with app_server(model, cfg) as (port, _):
        model.batches.clear()
        texts = [f"text number {i}" for i in range(6)]
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda t: call(port, "POST", "/v1/classify", {"texts": [t]}), texts))
        late = [t for t, (s, _) in zip(texts, replies) if s == 504]
        served = [t for t, (s, _) in zip(texts, replies) if s == 200]
        assert len(late) >= 2 and len(served) >= 1 and len(late) + len(served) == 6, replies
        assert all("not started within 0.6 s (--request_timeout_s)" in r["error"] for s, r in replies if s == 504)
        time.sleep(0.5)  # anything left would have run by now
        assert sorted(t for b in model.batches for t in b) == sorted(served)
        m = scrape(port)
    assert m["dhrd_refused_requests_total{reason=deadline}"] == len(late) == m["dhrd_requests_total{status=504}"]
    assert m["dhrd_queue_items"] == 0


def test_a_client_that_hangs_up_frees_its_items():
    model = FakeModel(delay=0.6)
    cfg = ServeConfig(model_dir="fake", max_batch_size=1, max_items=1, max_queue_items=8, max_wait_ms=0)
    with app_server(model, cfg) as (port, _):
        model.batches.clear()
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(call, port, "POST", "/v1/classify", {"texts": ["runs"]})
            time.sleep(0.15)
            body = b'{"texts": ["hung up"]}'
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                time.sleep(0.15)  # admitted and queued behind "runs"
            assert running.result()[0] == 200
        time.sleep(0.8)
        assert model.batches == [["runs"]]
        m = scrape(port)
    assert m["dhrd_refused_requests_total{reason=disconnected}"] == 1 and m["dhrd_requests_total{status=499}"] == 1
    assert m["dhrd_queue_items"] == 0


def test_ready_waits_for_the_warm_up_batch_health_does_not():
    model = FakeModel(delay=1.5)
    with app_server(model, ServeConfig(model_dir="fake", max_batch_size=3), wait_ready=False) as (port, _):
        assert call(port, "GET", "/health") == (200, {"status": "ok"})
        assert call(port, "GET", "/ready") == (503, {"ready": False, "reason": "warming up"})
        assert scrape(port)["dhrd_ready"] == 0
        deadline = time.monotonic() + 10
        while call(port, "GET", "/ready")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert call(port, "GET", "/ready") == (200, {"ready": True})
        assert model.batches == [["warm-up"] * 3]  # a full batch, before any request
