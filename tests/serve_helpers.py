"""Helpers shared by the serving tests: HTTP calls over a real socket, a metrics
scrape, a real ``dhrd serve`` process (``Server``), a lean directory to serve, and an
in-process server over a fake model (``FakeModel``, ``app_server``)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from tests.lean_helpers import REPO, TEXTS, make_dual_head, make_training_output

RTE_LABELS = ["entailment", "not_entailment"]
ROWS = [{"premise": "the cat is true", "hypothesis": "the cat holds"},
        {"premise": " false false: the river is false ", "hypothesis": "the river holds", "idx": 3},
        {"premise": "a b c d e f g h " * 12, "hypothesis": "short"}]
# mixed lengths, for the concurrency test
POOL = TEXTS + [f"Premise: {'word ' * (3 * i)}\nHypothesis: item {i}" for i in range(12)]


# ---------------------------------------------------------------------------------------
# Helpers: a server process and an HTTP client.

def call(port: int, method: str, path: str, body=None, timeout: float = 60):
    """(status, JSON reply) of one request; ``body`` may be an object (sent as JSON) or bytes."""
    return call_full(port, method, path, body, timeout)[:2]


def call_full(port: int, method: str, path: str, body=None, timeout: float = 60):
    """(status, JSON reply, headers) of one request."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null"), dict(resp.getheaders())
    finally:
        conn.close()


def scrape(port: int) -> dict[str, float]:
    """``GET /metrics`` parsed with prometheus_client's parser: {'name{k=v}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain")
        text = resp.read().decode()
    finally:
        conn.close()
    return {s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else ""):
            s.value for family in text_string_to_metric_families(text) for s in family.samples}


def raw_exchange(port: int, request: bytes) -> tuple[int, dict]:
    """Send raw HTTP bytes and parse the one reply (for bodies the client cannot describe honestly)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def serve_cmd(model_dir, *args) -> list[str]:
    return [sys.executable, "-m", "dhrd.cli", "serve", str(model_dir), *map(str, args)]


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


class Server:
    """``dhrd serve`` as a child process on a free port; stderr goes to a file (a pipe
    nobody reads could fill up and stall it)."""

    def __init__(self, model_dir, log_path, *args, command=serve_cmd):
        from dhrd.fileio import free_port

        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(command(model_dir, "--port", self.port, *args), cwd=REPO, env=child_env(),
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"dhrd serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if call(self.port, "GET", "/ready", timeout=5) == (200, {"ready": True}):
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"dhrd serve not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.close()


def probs_of(reply: dict, labels=RTE_LABELS) -> torch.Tensor:
    return torch.tensor([[p["probs"][lab] for lab in labels] for p in reply["predictions"]])


def check_predictions(reply: dict, want: torch.Tensor, labels=RTE_LABELS) -> None:
    got = probs_of(reply, labels)
    assert got.shape == want.shape and float((got - want).abs().max()) < 1e-5
    assert [p["label"] for p in reply["predictions"]] == [labels[i] for i in want.argmax(-1).tolist()]


# ---------------------------------------------------------------------------------------
# Fixtures: a lean directory, an HF sequence-classification directory, their servers.

def build_lean_dir(root) -> str:
    """A lean directory of a tiny dual-head model with decisive outputs (labels differ between inputs)."""
    from dhrd.export.lean import export_lean

    model, tok, special = make_dual_head(seed=11)
    with torch.no_grad():
        model.head.out.weight.mul_(40)
    export_lean(make_training_output(root, model, tok, special), root / "lean")
    return str(root / "lean")


class FakeModel:
    """Probabilities from the text length; a text "boom" makes its batch fail. Records
    each batch, and is slow enough that requests queue up behind a running batch."""

    format, task, labels, accepts_rows = "fake", None, ["short", "long"], False

    def __init__(self, delay: float = 0.05):
        self.batches: list[list[str]] = []
        self.delay = delay

    def predict(self, texts):
        self.batches.append(list(texts))
        time.sleep(self.delay)
        if "boom" in texts:
            raise RuntimeError("exploded on purpose")
        p = torch.tensor([min(len(t), 10) / 10 for t in texts])
        return torch.stack([1 - p, p], -1)

    def render(self, row):
        raise AssertionError("no rows")


@contextlib.contextmanager
def app_server(model, cfg, wait_ready: bool = True):
    """``create_app(model, cfg)`` served by uvicorn in a thread on a free port: (port, app)."""
    import uvicorn

    from dhrd.serve.http import bind, create_app

    sock = bind("127.0.0.1", 0)
    app = create_app(model, cfg)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    port = sock.getsockname()[1]
    deadline = time.monotonic() + 30
    while not (server.started and (app.state.serve_state.ready or not wait_ready)) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield port, app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
