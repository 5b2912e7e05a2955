"""The body of a ``POST /v1/classify``: read within size and time limits, parsed, checked
against its schema (``dhrd.serve.request_schema``) and rendered, so that every bad request
is a 4xx whose message names the item and field (``texts[3]``, ``rows[1]: field
'premise'``), never a 500 from a tokenizer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..data.errors import DataError
from ..jsonl import parse_line


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class ClientGone(Exception):
    """The client closed its connection: there is no one to answer."""


async def read_body(request, limit: int, timeout_s: float) -> bytes:
    """The body, refused with a 413 once Content-Length or the bytes received exceed
    ``limit`` (a client cannot make the server hold more), and with a 408 when it has not
    all arrived within ``timeout_s`` (a slow or lying client cannot hold a connection and
    a handler for ever). A client that hangs up mid-body raises ClientGone."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"bad Content-Length {declared!r}")
        if int(declared) > limit:
            raise RequestError(413, f"body of {declared} bytes; at most {limit} (--max_body_bytes)")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, f"body over {limit} bytes (--max_body_bytes)")
                chunks.append(chunk)
    except TimeoutError:
        got = f"{size} of {declared} declared bytes" if declared is not None else f"{size} bytes"
        raise RequestError(408, f"body not complete after {timeout_s:g} s ({got} received; --body_timeout_s)") from None
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


def _refuse_kind(payload, model, cfg) -> None:
    """A kind of input the model cannot take is named before its items are checked."""
    if isinstance(payload, dict) and len(payload) == 1:
        if "rows" in payload and not model.accepts_rows:
            raise RequestError(400, f'this model ({cfg.model_dir}) has no input template '
                                    '(dhrd_input_template in its config): only "texts" is accepted')
        if "texts" in payload and not getattr(model, "accepts_texts", True):
            raise RequestError(400, f'this is a multiple-choice model ({cfg.model_dir}): give "rows" of the '
                                    "task's raw fields (each option is scored with its question), not \"texts\"")


def request_texts(body: bytes, model, cfg) -> list[str]:
    """The model inputs of a classify request: texts checked, rows rendered. The body is
    parsed as the data readers parse a JSONL line (not UTF-8, nesting too deep, duplicate
    keys, integers too long and lone surrogates are each named, which pydantic's JSON
    parser would not all refuse), then checked against its schema."""
    from .request_schema import refusal

    if not body.strip():
        raise RequestError(400, 'empty body: send {"texts": [...]} or {"rows": [...]}')
    try:
        payload = parse_line(body, None, None)
    except DataError as e:
        raise RequestError(400, f"body: {e.reason}") from None
    _refuse_kind(payload, model, cfg)
    if problem := refusal(payload, model, cfg.max_items):
        raise RequestError(*problem)
    [(key, items)] = payload.items()
    texts = []
    for i, item in enumerate(items):
        if key == "rows":
            try:
                item = model.render(item)  # what the schema cannot say: e.g. a field only whitespace
            except (DataError, ValueError) as e:
                raise RequestError(422, f"{key}[{i}]: {e}") from None
        if cfg.max_text_chars is not None and len(item) > cfg.max_text_chars:
            raise RequestError(413, f"{key}[{i}]: {len(item)} characters; at most {cfg.max_text_chars} "
                                    "(--max_text_chars)")
        texts.append(item)
    return texts


def predictions(probs, labels: Sequence[str], items: Sequence = ()) -> list[dict]:
    """One answer per item; a multiple-choice row's also names the chosen option's text."""
    out = [{"label": labels[best], "probs": dict(zip(labels, row))}
           for best, row in zip(probs.argmax(-1).tolist(), probs.tolist())]
    for answer, item, best in zip(out, items, probs.argmax(-1).tolist()):
        options = getattr(item, "options", None)
        if options is not None:
            answer["option"] = options[best]
    return out
