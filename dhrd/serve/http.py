"""``dhrd serve MODEL_DIR``: an HTTP service for batch classification (FastAPI + uvicorn).

MODEL_DIR is a lean classifier directory (``lean_config.json``, ``dhrd.serve.classifier``) or a
standard Hugging Face sequence-classification directory (``config.json`` naming a
``*ForSequenceClassification`` architecture), see ``dhrd.serve.served_model``. Endpoints:

* ``GET /health``: ``{"status": "ok"}`` while the process serves (liveness);
* ``GET /ready``: 200 once a warm-up batch has run, 503 while warming up or draining (readiness);
* ``GET /metrics``: Prometheus text format (``dhrd.serve.metrics``);
* ``GET /v1/model``: format, task, labels, which inputs it accepts and the limits;
* ``GET /openapi.json``: the OpenAPI document, with the classify body's schema (its row fields);
* ``POST /v1/classify``: ``{"texts": [...]}`` (formatted inputs) or ``{"rows": [{...}]}``
  (raw task fields, rendered as training rendered them) -> ``{"predictions": [{"label",
  "probs"}]}`` in input order. A multiple-choice lean model (formulation choice) takes
  rows only, scores each option of a row alone and adds the chosen ``option``'s text;
  its ``probs`` are over the row's options.

Items of concurrent requests share model batches (``dhrd.serve.batcher``) behind a bounded
queue: past ``--max_queue_items`` a request gets 503 with Retry-After; one still queued at
``--request_timeout_s`` gets 504; a client that hangs up frees its items. Bad requests
get a 4xx naming the item and field (``dhrd.serve.request_body``), a failing batch a 500,
and the server keeps serving. SIGTERM drains (``dhrd.serve.shutdown``). docs/serving.md
is the operator's page.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations
# (``request: Request``) at route creation, and a string would not resolve to the local import
import argparse
import asyncio
import contextlib
import socket
import sys
import time
from dataclasses import asdict, dataclass

from .batcher import Batcher, Disconnected, ModelError, Refused
from .request_body import ClientGone, RequestError, predictions, read_body, request_texts
from .served_model import load_model

PROG = "dhrd serve"
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ServeConfig:
    model_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    dtype: str | None = None          # None: the lean directory's dtype; float32 for HF
    max_batch_size: int | None = None  # items per model batch; None: 8 on CPU (compute-bound), else 32
    max_wait_ms: float = 5.0          # how long a batch waits for more items
    max_items: int = 32               # items per request
    max_queue_items: int | None = None  # items admitted and waiting; more: 503. None: two batches (or max_items)
    max_body_bytes: int = 1 << 20     # request body size
    max_text_chars: int | None = None  # characters per (rendered) input; None: no limit
    request_timeout_s: float = 30.0   # a request still queued this long after arriving: 504
    body_timeout_s: float = 10.0      # the whole body must arrive within this: else 408
    drain_timeout_s: float = 30.0     # on SIGTERM: how long admitted requests may take

    def __post_init__(self):
        if self.max_batch_size is None:
            self.max_batch_size = 8 if self.device == "cpu" else 32
        if self.max_queue_items is None:  # two batches queued: a request waits ~3 batch times (docs/serving.md)
            self.max_queue_items = max(2 * self.max_batch_size, self.max_items)
        positive = ("max_batch_size", "max_items", "max_queue_items", "max_body_bytes", "request_timeout_s",
                    "body_timeout_s")
        for name in positive + (("max_text_chars",) if self.max_text_chars is not None else ()):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_wait_ms", "drain_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.max_queue_items < self.max_items:
            raise ValueError(f"--max_queue_items {self.max_queue_items} < --max_items {self.max_items}: "
                             "a full request could never be admitted")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")


class ServeState:
    """What ``/ready`` reports: warmed up and not draining."""

    def __init__(self):
        self.warmed, self.draining, self.batcher = False, False, None

    @property
    def ready(self) -> bool:
        return self.warmed and not self.draining


async def _hung_up(request) -> None:
    """Completes when the client closes its connection (after the body was read, the
    server's next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def classify_once(request, model, cfg: ServeConfig, batcher: Batcher, metrics):
    """(status, reply body, extra headers) of one classify request; counted."""
    t0, arrived = time.perf_counter(), asyncio.get_running_loop().time()
    headers = {}
    try:
        if not batcher.accepting:
            raise Refused(503, "draining", "the server is shutting down: retry on another replica", 1)
        texts = request_texts(await read_body(request, cfg.max_body_bytes, cfg.body_timeout_s), model, cfg)
        probs = await batcher.classify(texts, arrived, lambda: _hung_up(request))
        status, reply = 200, {"predictions": predictions(probs, model.labels, texts)}
    except RequestError as e:
        status, reply = e.status, {"error": e.message}
        if e.status in (408, 413):
            headers["Connection"] = "close"  # the rest of the body is not read
    except Refused as e:
        metrics.refused.labels(e.reason).inc()
        status, reply = e.status, {"error": e.message}
        if e.retry_after_s is not None:
            headers["Retry-After"] = str(e.retry_after_s)
        if e.reason == "draining":
            headers["Connection"] = "close"
    except (Disconnected, ClientGone):
        metrics.refused.labels("disconnected").inc()
        status, reply = 499, None  # nobody reads it
    except ModelError as e:
        status, reply = 500, {"error": str(e)}
    metrics.answered(status, time.perf_counter() - t0)
    return status, reply, headers


def create_app(model, cfg: ServeConfig, state: ServeState | None = None):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    from .metrics import ServeMetrics
    from .request_schema import body_model, rows_task

    state = state or ServeState()
    metrics = ServeMetrics(cfg.max_batch_size, cfg.max_queue_items)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(model.predict, cfg.max_batch_size, cfg.max_wait_ms / 1000, cfg.max_queue_items,
                          cfg.request_timeout_s, on_batch=metrics.observe_batch)
        state.batcher = app.state.batcher = batcher
        metrics.watch(batcher, lambda: state.ready)
        tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(_warm_up(batcher, state, cfg, model))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            batcher.close()

    app = FastAPI(title="dhrd classifier", lifespan=lifespan, docs_url=None, redoc_url=None)
    request_schema = _documented(app, body_model(rows_task(model), cfg.max_items))
    app.state.metrics, app.state.serve_state = metrics, state

    @app.exception_handler(HTTPException)  # 404, 405: the same {"error"} shape as ours
    async def _http_error(request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        why = "draining" if state.draining else None if state.warmed else "warming up"
        return JSONResponse({"ready": why is None, **({"reason": why} if why else {})},
                            status_code=200 if why is None else 503)

    @app.get("/metrics")
    async def metrics_page():
        return Response(metrics.render(), media_type=metrics.content_type)

    limits = {k: v for k, v in asdict(cfg).items() if k.startswith("max_") or k.endswith("_timeout_s")}

    @app.get("/v1/model")
    async def model_info():
        return {"format": model.format, "task": model.task, "labels": model.labels,
                "accepts": [k for k, ok in (("texts", getattr(model, "accepts_texts", True)),
                                            ("rows", model.accepts_rows)) if ok],
                "formulation": "choice" if getattr(model, "choice", False) else "classify",
                "model_dir": cfg.model_dir, **limits}

    @app.post("/v1/classify", openapi_extra={"requestBody": {"required": True, "content": {
              "application/json": {"schema": request_schema}}}})
    async def classify(request: Request):
        status, reply, headers = await classify_once(request, model, cfg, request.app.state.batcher, metrics)
        if reply is None:
            return Response(status_code=status)
        return JSONResponse(reply, status_code=status, headers=headers)

    return app


def _documented(app, request_model) -> dict:
    """The OpenAPI schema of ``request_model``, its nested models added to the document's
    components. The handler reads the raw body itself (within --max_body_bytes and
    --body_timeout_s) and validates it, so FastAPI cannot take the schema from a parameter."""
    from fastapi import FastAPI

    schema = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = schema.pop("$defs", {})

    def openapi() -> dict:
        if app.openapi_schema is None:
            FastAPI.openapi(app).setdefault("components", {}).setdefault("schemas", {}).update(nested)
        return app.openapi_schema

    app.openapi = openapi
    return schema


async def _warm_up(batcher: Batcher, state: ServeState, cfg: ServeConfig, model) -> None:
    """A full batch through the worker thread before ``/ready`` says yes: the first
    requests then do not pay for lazy initialisation or the largest allocation."""
    await batcher.warm_up([getattr(model, "warm_up_item", "warm-up")] * cfg.max_batch_size)
    state.warmed = True


def build_parser() -> argparse.ArgumentParser:
    d = ServeConfig(model_dir="")
    p = argparse.ArgumentParser(prog=PROG, description="HTTP service for batch classification")
    p.add_argument("model_dir", help="a lean classifier directory, or a HF sequence-classification directory")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port, help="0: any free port (printed on start)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", default=d.dtype, choices=DTYPES, help="default: the lean directory's; float32 for HF")
    p.add_argument("--max_batch_size", type=int, default=None,
                   help="items per model batch; default 8 on CPU (larger batches add latency, not throughput), "
                        "32 on a GPU")
    p.add_argument("--max_wait_ms", type=float, default=d.max_wait_ms, help="how long a batch waits to fill")
    p.add_argument("--max_items", type=int, default=d.max_items, help="items per request (more: 413)")
    p.add_argument("--max_body_bytes", type=int, default=d.max_body_bytes, help="request body size (more: 413)")
    p.add_argument("--max_text_chars", type=int, default=d.max_text_chars,
                   help="characters per input after rendering (more: 413); default no limit")
    p.add_argument("--max_queue_items", type=int, default=None,
                   help="items admitted and waiting for the model (more: 503 with Retry-After); "
                        "default 2 x --max_batch_size (at least --max_items)")
    p.add_argument("--request_timeout_s", type=float, default=d.request_timeout_s,
                   help="a request still queued this long after arriving gets 504")
    p.add_argument("--body_timeout_s", type=float, default=d.body_timeout_s,
                   help="the whole request body must arrive within this (else 408)")
    p.add_argument("--drain_timeout_s", type=float, default=d.drain_timeout_s,
                   help="on SIGTERM/SIGINT: how long admitted requests may still take")
    return p


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is our one-line error (and
    port 0 gives a real port to print) rather than uvicorn's exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)
    return sock


def serve(model, cfg: ServeConfig) -> int:
    """Serve ``model`` on ``cfg.host:cfg.port`` until a signal has drained it; 0."""
    import uvicorn

    from .shutdown import DrainingServer

    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    print(f"{PROG}: {model.format} classifier {cfg.model_dir} (task {model.task}, labels {', '.join(model.labels)}) "
          f"on http://{host}:{port}", file=sys.stderr, flush=True)
    state = ServeState()

    async def drain() -> bool:
        state.draining = True
        return await state.batcher.drain(cfg.drain_timeout_s)

    server = DrainingServer(uvicorn.Config(create_app(model, cfg, state), log_level="warning",
                                           timeout_graceful_shutdown=5), drain, PROG)
    server.run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as e:
        raise ValueError(f"{e.name} is not installed: pip install 'dhrd[serve]'") from None
    cfg = ServeConfig(**vars(build_parser().parse_args(argv)))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a service's log holds requests' news, not loading bars
    return serve(load_model(cfg.model_dir, cfg.device, cfg.dtype, cfg.max_batch_size), cfg)


if __name__ == "__main__":
    from ..cli_errors import run_main

    sys.exit(run_main(PROG, main))
