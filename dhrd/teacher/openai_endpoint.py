"""Any OpenAI-compatible endpoint as the teacher (vLLM, ``transformers serve``, hosted
APIs), on the standard library alone: a bounded thread pool sends at most
``concurrency`` requests at once; 429s, 5xx, timeouts and dropped connections are
retried with exponential backoff and full jitter (honouring Retry-After).

The API key is read from the environment variable named in the config at request time,
never stored on the config, and scrubbed from every error text: it reaches no log,
record or failure file.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from . import Completion
from .prompts import Prompt

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass
class EndpointConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1 (the part before /chat/completions)
    model: str
    api: str = "chat"  # "chat" (/chat/completions) or "completions" (/completions, plain prompt)
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable; unset -> no Authorization header
    concurrency: int = 8
    timeout: float = 120.0  # seconds per request
    max_retries: int = 6
    backoff_base: float = 1.0  # seconds; attempt k sleeps uniform(0, min(backoff_max, base * 2**k))
    backoff_max: float = 60.0
    max_tokens: int = 500
    temperature: float = 0.1
    top_p: float = 0.7
    seed: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged into each request body


class RequestError(Exception):
    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retryable, self.retry_after = reason, retryable, retry_after


class EndpointTeacher:
    def __init__(self, cfg: EndpointConfig):
        if cfg.api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {cfg.api!r}")
        if cfg.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.cfg = cfg
        self.name = f"openai:{cfg.model}"
        self.url = cfg.base_url.rstrip("/") + ("/chat/completions" if cfg.api == "chat" else "/completions")
        self.retries = 0  # total retried attempts, for the summary
        self._lock = threading.Lock()
        self._closed = threading.Event()  # close(): every retry sleep ends, no new attempt

    # -- one request -------------------------------------------------------------------
    def body(self, prompt: Prompt) -> dict[str, Any]:
        cfg = self.cfg
        body: dict[str, Any] = {"model": cfg.model, "max_tokens": cfg.max_tokens,
                                "temperature": cfg.temperature, "top_p": cfg.top_p}
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if cfg.api == "chat":
            body["messages"] = prompt.messages()
        else:
            body["prompt"] = prompt.text()
        body.update(cfg.extra_body)
        return body

    def _key(self) -> str | None:
        return os.environ.get(self.cfg.api_key_env) or None

    def _scrub(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace").strip() if e.fp else ""
            retry_after = _seconds(e.headers.get("Retry-After")) if e.headers else None
            raise RequestError(f"http_{e.code}: {detail}", e.code in RETRY_STATUS, retry_after) from None
        except (TimeoutError, socket.timeout):
            raise RequestError("timeout", True) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise RequestError("timeout", True) from None
            raise RequestError(f"connection: {e.reason}", True) from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            raise RequestError(f"connection: {type(e).__name__}: {e}", True) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise RequestError(f"bad_response: not JSON: {raw[:200]!r}", False) from None

    def _parse(self, data: dict[str, Any]) -> Completion:
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") if self.cfg.api == "chat" else choice.get("text")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RequestError(f"bad_response: no choices[0] text in {json.dumps(data)[:200]}", False) from None
        usage = data.get("usage") or {}
        return Completion(text or "", choice.get("finish_reason"),
                          int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

    def complete(self, prompt: Prompt, stop: threading.Event | None = None) -> Completion:
        """One prompt, with retries; never raises: a final failure comes back as error.
        Setting ``stop`` (or close()) ends the retrying."""
        stop = stop or self._closed
        body = self.body(prompt)
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return self._parse(self._post(body))
            except RequestError as e:
                reason = self._scrub(e.reason)
                if not e.retryable or attempt == self.cfg.max_retries or stop.is_set() or self._closed.is_set():
                    return Completion("", error=reason)
                delay = random.uniform(0, min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** attempt))
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, self.cfg.backoff_max))
                with self._lock:
                    self.retries += 1
                log.info("retrying after %s (attempt %d, sleeping %.2fs)", reason, attempt + 1, delay)
                if stop.wait(delay) or self._closed.is_set():
                    return Completion("", error=reason)
        raise AssertionError("unreachable")

    # -- many prompts ------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, Completion]]:
        """Yield as each request finishes. At most ``concurrency`` are in flight and at
        most as many queued, so stopping early (Ctrl-C, an error downstream) abandons
        little work and exits promptly."""
        pending: dict[Future, int] = {}
        todo = iter(range(len(prompts)))
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="teacher")
        try:
            while True:
                while len(pending) < 2 * self.cfg.concurrency:
                    i = next(todo, None)
                    if i is None:
                        break
                    pending[pool.submit(self.complete, prompts[i], stop)] = i
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
        finally:  # stopped early: end retry sleeps, drop the queue, do not wait for in-flight
            stop.set()
            pool.shutdown(wait=not pending, cancel_futures=True)

    def close(self) -> None:
        self._closed.set()


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
