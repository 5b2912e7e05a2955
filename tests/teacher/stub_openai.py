"""A small OpenAI-compatible server on the standard library, for tests: it answers
/v1/chat/completions and /v1/completions, counts requests in flight, records every
request, and injects faults by example id (the fixture rows carry a token ``ID<n>``
that the prompt repeats).

Each example's faults are a list consumed one per attempt: an HTTP status ("500",
"503", "400", ...; "429" comes with Retry-After: 0), "sleep"
(past the client timeout), "empty", "echo_key" (a 500 whose body echoes the
Authorization header, to check the client never writes it anywhere), "gibberish" (no
parsable answer); after the list runs out the request succeeds.

With ``upstream`` (a real server's root URL) it is a fault-injecting, request-counting
proxy instead: requests without a fault (or with "sleep", after it) are forwarded there
and its answer is passed back unchanged.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dhrd.data.rationales import END_MARKER


class StubState:
    def __init__(self, delay: float = 0.0, faults: dict[str, list[str]] | None = None,
                 sleep_s: float = 2.0, answer=None, api_key: str | None = None, upstream: str | None = None):
        self.delay, self.sleep_s, self.api_key = delay, sleep_s, api_key
        self.upstream = upstream.rstrip("/") if upstream else None
        self.faults = defaultdict(list, {k: list(v) for k, v in (faults or {}).items()})
        self.answer = answer or (lambda example_id: "yes")  # blind-mode answer per id
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.attempts: Counter = Counter()  # id -> requests seen
        self.bodies: list[dict] = []
        self.unauthorized = 0


def _prompt_text(body: dict) -> str:
    return body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))


def _example_id(body: dict) -> str:
    m = re.search(r"ID(\d+)\b", _prompt_text(body))
    return m.group(1) if m else "?"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: StubState  # set on the subclass made per server

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, payload: dict | str, headers: dict | None = None) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def do_POST(self):
        st = self.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with st.lock:
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            st.bodies.append(body)
            ex = _example_id(body)
            st.attempts[ex] += 1
            fault = st.faults[ex].pop(0) if st.faults[ex] else None
        try:
            reply = self._reply(st, body, ex, fault)
        finally:
            # counted out BEFORE the reply goes: once the client has it, it may send the
            # next request at once, and that must not look like one too many in flight
            with st.lock:
                st.in_flight -= 1
        self._send(*reply)

    def _reply(self, st: StubState, body: dict, ex: str, fault: str | None) -> tuple:
        """(status, payload[, headers]) for one request."""
        if st.api_key is not None and self.headers.get("Authorization") != f"Bearer {st.api_key}":
            with st.lock:
                st.unauthorized += 1
            return 401, {"error": "bad key"}
        time.sleep(st.delay)
        if fault == "429":
            return 429, {"error": "slow down"}, {"Retry-After": "0"}
        if fault and fault.isdigit():  # any other status: "500", "503", "400", ...
            return int(fault), {"error": "boom"}
        if fault == "echo_key":
            return 500, {"error": f"server saw {self.headers.get('Authorization')}"}
        if fault == "sleep":
            time.sleep(st.sleep_s)
        if st.upstream and fault not in ("empty", "gibberish"):
            return _forward(st.upstream + self.path, body)
        if fault == "empty":
            text = ""
        elif fault == "gibberish":
            text = f"I cannot decide. {END_MARKER}"
        elif "Answer: <" in _prompt_text(body):  # a blind-mode prompt
            text = f"Looking at ID{ex} step by step, it follows.\nAnswer: {st.answer(ex)}\n{END_MARKER}"
        else:
            text = f"Because of ID{ex}, step by step, it follows. {END_MARKER}"
        chat = self.path.endswith("/chat/completions")
        choice = {"index": 0, "finish_reason": "stop",
                  **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
        return 200, {"id": "x", "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                     "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())}}


def _forward(url: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


class StubServer:
    """``with StubServer(state) as url:`` serves on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, state: StubState):
        self.state = state
        handler = type("BoundHandler", (Handler,), {"state": state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
