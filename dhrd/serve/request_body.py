"""The body of a ``POST /v1/classify``: read within size and time limits, parsed, and
checked item by item, so that every bad request is a 4xx whose message names the item
and field (``texts[3]``, ``rows[1]: field 'premise'``), never a 500 from a tokenizer."""

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


_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
          dict: "an object", type(None): "null"}


def kind(value) -> str:
    return _KINDS.get(type(value), type(value).__name__)


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


def parse_items(body: bytes, max_items: int) -> tuple[str, list]:
    """("texts" | "rows", the items) of a classify request. The body is parsed as the
    data readers parse a JSONL line: not UTF-8, nesting too deep, duplicate keys, integers
    too long and lone surrogates are each named, not raised from deep inside a parser."""
    if not body.strip():
        raise RequestError(400, 'empty body: send {"texts": [...]} or {"rows": [...]}')
    try:
        payload = parse_line(body, None, None)
    except DataError as e:
        raise RequestError(400, f"body: {e.reason}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f'the body must be a JSON object {{"texts": [...]}} or {{"rows": [...]}}, '
                                f"got {kind(payload)}")
    unknown = sorted(set(payload) - {"texts", "rows"})
    if unknown:
        raise RequestError(400, f"unknown key(s) {', '.join(map(repr, unknown))}: give \"texts\" or \"rows\"")
    if len(payload) != 1:
        raise RequestError(400, 'give exactly one of "texts" (formatted inputs) or "rows" (raw task fields)')
    key, items = next(iter(payload.items()))
    if not isinstance(items, list):
        raise RequestError(400, f'"{key}" must be an array, got {kind(items)}')
    if not items:
        raise RequestError(400, f'"{key}" is empty')
    if len(items) > max_items:
        raise RequestError(413, f'{len(items)} {key}; at most {max_items} per request (--max_items)')
    return key, items


def _row_text(model, item, where: str) -> str:
    if not isinstance(item, dict):
        raise RequestError(400, f"{where}: expected an object of task fields, got {kind(item)}")
    try:
        return model.render(item)
    except (DataError, ValueError) as e:
        raise RequestError(422, f"{where}: {e}") from None


def request_texts(body: bytes, model, cfg) -> list[str]:
    """The model inputs of a classify request: texts checked, rows rendered."""
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
        if key == "rows":
            item = _row_text(model, item, where)
        elif not isinstance(item, str):
            raise RequestError(400, f"{where}: expected a string, got {kind(item)}")
        elif not item.strip():
            raise RequestError(400, f"{where}: empty (only whitespace)")
        if cfg.max_text_chars is not None and len(item) > cfg.max_text_chars:
            raise RequestError(413, f"{where}: {len(item)} characters; at most {cfg.max_text_chars} "
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
