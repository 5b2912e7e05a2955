"""``dhrd serve MODEL_DIR``: an HTTP service for batch classification (FastAPI + uvicorn).

MODEL_DIR is a lean classifier directory (``lean_config.json``, ``dhrd.serve.classifier``) or a
standard Hugging Face sequence-classification directory (``config.json`` naming a
``*ForSequenceClassification`` architecture). Both answer the same three endpoints:

* ``GET /health``: ``{"status": "ok"}`` (the model is loaded before the port is bound);
* ``GET /v1/model``: format, task, labels, which inputs it accepts and the limits;
* ``POST /v1/classify``: ``{"texts": [...]}`` (formatted inputs) or ``{"rows": [{...}]}``
  (raw task fields, rendered as training rendered them) -> ``{"predictions": [{"label",
  "probs"}]}`` in input order. A multiple-choice lean model (formulation choice) takes
  rows only, scores each option of a row alone and adds the chosen ``option``'s text;
  its ``probs`` are over the row's options.

Items of concurrent requests are gathered into one model batch (``--max_batch_size`` items
or ``--max_wait_ms`` of waiting), run in one worker thread so the event loop keeps
accepting and answering; each request gets its own slice back. Bad requests are answered
``{"error": ...}`` with a 4xx naming the item and field, a failing batch with a 500, and
the server keeps serving. A directory that cannot be served ends the command with one
line on stderr and exit code 2 before any port is bound.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations
# (``request: Request``) at route creation, and a string would not resolve to the local import
import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

PROG = "dhrd serve"
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ServeConfig:
    model_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    dtype: str | None = None          # None: the lean directory's dtype; float32 for HF
    max_batch_size: int = 32          # items per model batch
    max_wait_ms: float = 5.0          # how long a batch waits for more items
    max_items: int = 256              # items per request
    max_body_bytes: int = 1 << 20     # request body size
    max_text_chars: int | None = None  # characters per (rendered) input; None: no limit

    def __post_init__(self):
        positive = ("max_batch_size", "max_items", "max_body_bytes")
        for name in positive + (("max_text_chars",) if self.max_text_chars is not None else ()):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")


# ---------------------------------------------------------------------------------------
# The two kinds of model directory behind one interface.

@dataclass
class Question:
    """A multiple-choice row, rendered: one input per option, and the options' texts."""

    inputs: list[str]
    options: list[str]


class LeanModel:
    """A lean classifier directory: x is tokenised as training did; rows render with the
    task's own Python template (Task.render, or Task.render_options for a choice model),
    which training used."""

    format = "lean"

    def __init__(self, path: str, device: str, dtype: str | None, batch_size: int):
        from ..data.tasks import get_task
        from .classifier import LeanClassifier

        self.clf = LeanClassifier.load(path, device=device, dtype=dtype)
        self.task = self.clf.config.task
        self.labels = list(self.clf.config.labels)
        self._task = get_task(self.task)
        self.batch_size = batch_size
        self.choice = self.clf.config.formulation == "choice"
        self.accepts_rows, self.accepts_texts = True, not self.choice
        self.warm_up_item = Question(["warm-up"] * len(self.labels), self.labels) if self.choice else "warm-up"

    def predict(self, items: Sequence):
        import torch

        if self.choice:
            return torch.stack(self.clf.predict_choices([q.inputs for q in items], self.batch_size))
        return self.clf.predict(items, self.batch_size)

    def render(self, row: Mapping):
        if self.choice:
            return Question(self._task.render_options(row), [o.strip() for o in self._task.options(row)])
        return self._task.render(row)


class HFModel:
    """A Hugging Face sequence-classification directory: the model pools its own last
    non-pad token, so batches are right-padded and the config is told the pad id we pad
    with; rows render with the Jinja2 template stored under ``dhrd_input_template``, if
    any. As with HF's pipeline, inputs are cut only at the model's own length limit (not
    at the training max_input_len: see dhrd/export/hf.py)."""

    format = "hf"
    accepts_texts, warm_up_item = True, "warm-up"

    def __init__(self, path: str, device: str, dtype: str | None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..data.templates import CONFIG_KEY
        from ..model.backbones import NO_REMOTE_CODE, refuse_remote_code

        refuse_remote_code(path)
        tok = AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
        tok.padding_side = "right"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype or "float32"),
                                                                   **NO_REMOTE_CODE)
        model.config.pad_token_id = tok.pad_token_id  # the id the model looks for is the one we pad with
        self.model, self.tokenizer, self.device = model.to(device).eval(), tok, torch.device(device)
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        meta = getattr(model.config, "dhrd", None)  # what dhrd.export.hf records
        self.task = meta.get("task") if isinstance(meta, dict) else None
        self.template = getattr(model.config, CONFIG_KEY, None)
        self.accepts_rows = self.template is not None
        limits = [tok.model_max_length, getattr(model.config, "max_position_embeddings", None)]
        self.max_length = min(n for n in limits if n is not None)

    def predict(self, texts: Sequence[str]):
        import torch

        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            return self.model(**enc).logits.float().softmax(-1).cpu()

    def render(self, row: Mapping) -> str:
        from jinja2 import TemplateError

        from ..data.templates import render_input

        try:
            return render_input(self.template, row)
        except (TemplateError, TypeError) as e:  # a field of the wrong shape for the template
            raise ValueError(f"the input template cannot render this row ({type(e).__name__}: {e})") from None


def model_format(path: str) -> str:
    """``lean`` or ``hf`` from the directory's files alone, before any weights load."""
    from ..fileio import read_json
    from .lean_format import LEAN_CONFIG

    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a directory")
    if os.path.isfile(os.path.join(path, LEAN_CONFIG)):
        return "lean"
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise ValueError(f"{path}: not a model directory: neither {LEAN_CONFIG} (a lean classifier) nor "
                         "config.json (a Hugging Face sequence-classification model)")
    try:
        data = read_json(config)
    except OSError as e:
        raise ValueError(f"{config}: unreadable ({e})") from None
    archs = data.get("architectures") if isinstance(data, dict) else None
    if not (isinstance(archs, list) and archs and isinstance(archs[0], str)
            and archs[0].endswith("ForSequenceClassification")):
        raise ValueError(f"{path}: config.json names architectures={json.dumps(archs)}, not a "
                         f"*ForSequenceClassification model (and there is no {LEAN_CONFIG})")
    return "hf"


def load_model(path: str, device: str = "cpu", dtype: str | None = None, batch_size: int = 32):
    """The served model: LeanModel or HFModel, checked with one prediction. Any failure is
    a ValueError naming the directory: whatever breaks, the directory cannot be served."""
    path = str(path)
    fmt = model_format(path)
    try:
        model = LeanModel(path, device, dtype, batch_size) if fmt == "lean" else HFModel(path, device, dtype)
        model.predict([model.warm_up_item])
    except Exception as e:  # noqa: BLE001 - reported as one line; DHRD_DEBUG=1 shows the cause
        first = (str(e).strip().splitlines() or [""])[0][:300]
        if first.startswith(path):
            raise ValueError(first) from e
        raise ValueError(f"{path}: cannot load the {fmt} classifier on {device} ({type(e).__name__}: {first})") from e
    return model


# ---------------------------------------------------------------------------------------
# Requests: body limits and schema, each error naming the item and field.

class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class ModelError(Exception):
    """The model raised on a batch: every request in it gets a 500."""


_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
          dict: "an object", type(None): "null"}


def _kind(value) -> str:
    return _KINDS.get(type(value), type(value).__name__)


async def read_body(request, limit: int) -> bytes:
    """The body, refused with a 413 once Content-Length or the bytes received exceed
    ``limit``: a client cannot make the server hold more than that."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"bad Content-Length {declared!r}")
        if int(declared) > limit:
            raise RequestError(413, f"body of {declared} bytes; at most {limit} (--max_body_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body over {limit} bytes (--max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_items(body: bytes, max_items: int) -> tuple[str, list]:
    """("texts" | "rows", the items) of a classify request."""
    try:
        payload = json.loads(body)
    except ValueError as e:  # also a body that is not UTF-8
        raise RequestError(400, f"malformed JSON: {e}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f'the body must be a JSON object {{"texts": [...]}} or {{"rows": [...]}}, '
                                f"got {_kind(payload)}")
    unknown = sorted(set(payload) - {"texts", "rows"})
    if unknown:
        raise RequestError(400, f"unknown key(s) {', '.join(map(repr, unknown))}: give \"texts\" or \"rows\"")
    if len(payload) != 1:
        raise RequestError(400, 'give exactly one of "texts" (formatted inputs) or "rows" (raw task fields)')
    key, items = next(iter(payload.items()))
    if not isinstance(items, list):
        raise RequestError(400, f'"{key}" must be an array, got {_kind(items)}')
    if not items:
        raise RequestError(400, f'"{key}" is empty')
    if len(items) > max_items:
        raise RequestError(413, f'{len(items)} {key}; at most {max_items} per request (--max_items)')
    return key, items


def request_texts(body: bytes, model, cfg: ServeConfig) -> list[str]:
    """The model inputs of a classify request: texts checked, rows rendered."""
    from ..data.errors import DataError

    key, items = parse_items(body, cfg.max_items)
    if key == "rows" and not model.accepts_rows:
        raise RequestError(400, f'this model ({cfg.model_dir}) has no input template '
                                '(dhrd_input_template in its config): only "texts" is accepted')
    if key == "texts" and not getattr(model, "accepts_texts", True):
        raise RequestError(400, f'this is a multiple-choice model ({cfg.model_dir}): give "rows" of the task\'s '
                                'raw fields (each option is scored with its question), not "texts"')
    texts = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if key == "texts" and not isinstance(item, str):
            raise RequestError(400, f"{where}: expected a string, got {_kind(item)}")
        if key == "texts" and not item.strip():
            raise RequestError(400, f"{where}: empty (only whitespace)")
        if key == "rows":
            if not isinstance(item, dict):
                raise RequestError(400, f"{where}: expected an object of task fields, got {_kind(item)}")
            try:
                item = model.render(item)
            except (DataError, ValueError) as e:
                raise RequestError(422, f"{where}: {e}") from None
        size = max(map(len, item.inputs)) if isinstance(item, Question) else len(item)
        if cfg.max_text_chars is not None and size > cfg.max_text_chars:
            raise RequestError(413, f"{where}: {size} characters; at most {cfg.max_text_chars} "
                                    "(--max_text_chars)")
        texts.append(item)
    return texts


def predictions(probs, labels: Sequence[str], items: Sequence = ()) -> list[dict]:
    """One answer per item; a multiple-choice row's also names the chosen option's text."""
    out = [{"label": labels[best], "probs": dict(zip(labels, row))}
           for best, row in zip(probs.argmax(-1).tolist(), probs.tolist())]
    for answer, item, best in zip(out, items, probs.argmax(-1).tolist()):
        if isinstance(item, Question):
            answer["option"] = item.options[best]
    return out


# ---------------------------------------------------------------------------------------
# Batching across requests.

@dataclass
class _Chunk:
    texts: list[str]
    future: asyncio.Future


class Batcher:
    """Gathers the items of concurrent requests into model batches: a batch takes whole
    request chunks (a request over ``max_batch_size`` items is cut into chunks) until it
    is full or ``max_wait_s`` has passed since its first chunk. One worker thread runs the
    model, so batches never compete for the cores and the event loop stays free."""

    def __init__(self, predict, max_batch_size: int, max_wait_s: float):
        self.predict, self.max_batch_size, self.max_wait_s = predict, max_batch_size, max_wait_s
        self.queue: asyncio.Queue[_Chunk] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="dhrd-model")
        self._held: _Chunk | None = None  # the chunk that did not fit the previous batch

    async def classify(self, texts: list[str]):
        """Class probabilities [len(texts), C] in input order."""
        import torch

        loop = asyncio.get_running_loop()
        n = self.max_batch_size
        chunks = [_Chunk(texts[i:i + n], loop.create_future()) for i in range(0, len(texts), n)]
        for chunk in chunks:
            self.queue.put_nowait(chunk)
        parts = await asyncio.gather(*(c.future for c in chunks), return_exceptions=True)  # all retrieved
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        return torch.cat(parts)

    async def _next_batch(self) -> list[_Chunk]:
        loop = asyncio.get_running_loop()
        first = self._held or await self.queue.get()
        self._held = None
        batch, size = [first], len(first.texts)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch_size:
            if not self.queue.empty():  # what is queued already joins at once, even past the deadline
                chunk = self.queue.get_nowait()
            elif (remaining := deadline - loop.time()) <= 0:
                break
            else:
                try:
                    chunk = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if size + len(chunk.texts) > self.max_batch_size:
                self._held = chunk
                break
            batch.append(chunk)
            size += len(chunk.texts)
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [c for c in await self._next_batch() if not c.future.done()]  # skip abandoned requests
            if not batch:
                continue
            try:
                probs = await loop.run_in_executor(self.executor, self.predict, [t for c in batch for t in c.texts])
            except Exception as e:  # noqa: BLE001 - the requests get a 500; the server keeps serving
                traceback.print_exc(file=sys.stderr)
                error = ModelError(f"the model failed on this batch: {type(e).__name__}: {e}")
                for c in batch:
                    if not c.future.done():
                        c.future.set_exception(error)
                continue
            start = 0
            for c in batch:
                if not c.future.done():
                    c.future.set_result(probs[start:start + len(c.texts)])
                start += len(c.texts)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------
# The app and the command.

def create_app(model, cfg: ServeConfig):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(model.predict, cfg.max_batch_size, cfg.max_wait_ms / 1000)
        task = asyncio.create_task(batcher.run())
        app.state.batcher = batcher
        try:
            yield
        finally:
            task.cancel()
            batcher.close()

    app = FastAPI(title="dhrd classifier", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        return error(e.status, e.message)

    @app.exception_handler(ModelError)
    async def _model_error(request, e: ModelError):
        return error(500, str(e))

    @app.exception_handler(HTTPException)  # 404, 405: the same {"error"} shape as ours
    async def _http_error(request, e: HTTPException):
        return error(e.status_code, str(e.detail))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    limits = {k: v for k, v in asdict(cfg).items() if k.startswith("max_")}

    @app.get("/v1/model")
    async def model_info():
        return {"format": model.format, "task": model.task, "labels": model.labels,
                "accepts": [k for k, ok in (("texts", getattr(model, "accepts_texts", True)),
                                            ("rows", model.accepts_rows)) if ok],
                "formulation": "choice" if getattr(model, "choice", False) else "classify",
                "model_dir": cfg.model_dir, **limits}

    @app.post("/v1/classify")
    async def classify(request: Request):
        texts = request_texts(await read_body(request, cfg.max_body_bytes), model, cfg)
        probs = await request.app.state.batcher.classify(texts)
        return JSONResponse({"predictions": predictions(probs, model.labels, texts)})

    return app


def build_parser() -> argparse.ArgumentParser:
    d = ServeConfig(model_dir="")
    p = argparse.ArgumentParser(prog=PROG, description="HTTP service for batch classification")
    p.add_argument("model_dir", help="a lean classifier directory, or a HF sequence-classification directory")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port, help="0: any free port (printed on start)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", default=d.dtype, choices=DTYPES, help="default: the lean directory's; float32 for HF")
    p.add_argument("--max_batch_size", type=int, default=d.max_batch_size, help="items per model batch")
    p.add_argument("--max_wait_ms", type=float, default=d.max_wait_ms, help="how long a batch waits to fill")
    p.add_argument("--max_items", type=int, default=d.max_items, help="items per request (more: 413)")
    p.add_argument("--max_body_bytes", type=int, default=d.max_body_bytes, help="request body size (more: 413)")
    p.add_argument("--max_text_chars", type=int, default=d.max_text_chars,
                   help="characters per input after rendering (more: 413); default no limit")
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


def main(argv: list[str] | None = None) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as e:
        raise ValueError(f"{e.name} is not installed: pip install 'dhrd[serve]'") from None
    cfg = ServeConfig(**vars(build_parser().parse_args(argv)))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a service's log holds requests' news, not loading bars
    model = load_model(cfg.model_dir, cfg.device, cfg.dtype, cfg.max_batch_size)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    print(f"{PROG}: {model.format} classifier {cfg.model_dir} (task {model.task}, labels {', '.join(model.labels)}) "
          f"on http://{host}:{port}", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(model, cfg), log_level="warning", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    from ..cli_errors import run_main

    sys.exit(run_main(PROG, main))
