"""Load test of ``dhrd serve``: ramps concurrent clients past saturation and checks that
no answer was lost or mixed up between clients.

    python tools/bench_serve.py LEAN_DIR [--clients 1,2,4,8,16,32] [--step_s 10] [--request_size 4]
    python tools/bench_serve.py --make_lean smollm2 --lean_dir /tmp/smollm2-lean     # untrained head

It starts its own server on 127.0.0.1 (loopback only: it never loads anything but the
server it started), runs each step for ``--step_s`` seconds with that many closed-loop
clients (keep-alive connections; after a 503 a client waits ``--backoff_s``, not the full
Retry-After, so the offered load stays past saturation), and prints per step: offered and
served requests/s, p50/p99 latency of the 200 answers, errors by class, the server's own
refusal counts from /metrics and its resident memory. Every client sends different
task rows; at the end every 200 answer's probabilities are compared, row by row, with
``dhrd predict`` on the same rows. Bounded: at most ``--max_seconds`` of load and
``--max_requests`` requests; it stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

WORDS = ("the cat dog sun tree book river stone cloud city road house water light small large old new "
         "because therefore said that which would could there their about after before people").split()
TOLERANCE = 1e-4  # batch composition changes float sums in the last bits, never more


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("lean_dir", nargs="?", default=None, help="a lean classifier directory (rte)")
    p.add_argument("--make_lean", default=None, metavar="MODEL",
                   help="first write LEAN_DIR (or --lean_dir) from this decoder with an untrained head (smollm2)")
    p.add_argument("--lean_dir", dest="lean_dir_opt", default=None)
    p.add_argument("--clients", default="1,2,4,8,16,32", help="concurrent clients per step")
    p.add_argument("--step_s", type=float, default=10.0)
    p.add_argument("--request_size", type=int, default=4, help="rows per request")
    p.add_argument("--pool", type=int, default=200, help="distinct rows")
    p.add_argument("--min_words", type=int, default=10)
    p.add_argument("--max_words", type=int, default=40)
    p.add_argument("--backoff_s", type=float, default=0.1, help="a client's pause after a 503")
    p.add_argument("--client_timeout_s", type=float, default=120.0)
    p.add_argument("--max_seconds", type=float, default=300.0, help="cap on the load phase")
    p.add_argument("--max_requests", type=int, default=100000)
    p.add_argument("--serve_args", default="", help="more dhrd serve flags, e.g. '--max_queue_items 64'")
    p.add_argument("--json_out", default=None)
    args = p.parse_args(argv)
    args.lean_dir = args.lean_dir or args.lean_dir_opt
    if not args.lean_dir:
        p.error("give LEAN_DIR (or --lean_dir)")
    args.clients = [int(c) for c in args.clients.split(",")]
    if len(args.clients) * args.step_s > args.max_seconds:
        p.error(f"{len(args.clients)} steps x {args.step_s:g} s is over --max_seconds {args.max_seconds:g}")
    return args


def make_rows(n: int, lo: int, hi: int) -> list[dict]:
    rng = random.Random(0)
    return [{"idx": i, "premise": " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))),
             "hypothesis": " ".join(rng.choice(WORDS) for _ in range(6))} for i in range(n)]


class ServerProcess:
    """``dhrd serve`` on 127.0.0.1, a free port, until stop()."""

    def __init__(self, lean_dir: str, extra: list[str], log):
        from dhrd.fileio import free_port

        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "dhrd.cli", "serve", lean_dir, "--host", "127.0.0.1",
                                      "--port", str(self.port), *extra], stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"dhrd serve exited with {self.proc.returncode}")
            try:
                if request(self.port, "GET", "/ready", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"dhrd serve not ready after {timeout:g} s")

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 60, conn=None):
    """(status, body bytes, headers); ``conn`` keeps the connection alive between calls."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        if own:
            conn.close()


class Step:
    """One load step's records, shared by its client threads."""

    def __init__(self, clients: int):
        self.clients, self.lock = clients, threading.Lock()
        self.sent, self.latencies, self.errors, self.answers = 0, [], Counter(), []


def client(port: int, rows: list[dict], step: Step, k: int, stop_at: float, args, budget) -> None:
    rng = random.Random(1000 * step.clients + k)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=args.client_timeout_s)
    while time.monotonic() < stop_at and budget.acquire(blocking=False):
        ids = [rng.randrange(len(rows)) for _ in range(args.request_size)]
        body = json.dumps({"rows": [rows[i] for i in ids]}).encode()
        t0 = time.perf_counter()
        try:
            status, data, _ = request(port, "POST", "/v1/classify", body, conn=conn)
        except (OSError, http.client.HTTPException) as e:
            with step.lock:
                step.sent += 1
                step.errors[type(e).__name__] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=args.client_timeout_s)
            continue
        elapsed = time.perf_counter() - t0
        with step.lock:
            step.sent += 1
            if status == 200:
                step.latencies.append(elapsed)
                step.answers.append((ids, json.loads(data)["predictions"]))
            else:
                step.errors[str(status)] += 1
        if status == 503:
            time.sleep(args.backoff_s)
    conn.close()


def scrape(port: int) -> dict[str, float]:
    """The server's counters and gauges, parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    text = request(port, "GET", "/metrics")[1].decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_steps(server: ServerProcess, rows: list[dict], args) -> list[dict]:
    budget = threading.Semaphore(args.max_requests)
    results = []
    for n in args.clients:
        step, before = Step(n), scrape(server.port)
        stop_at = time.monotonic() + args.step_s
        threads = [threading.Thread(target=client, args=(server.port, rows, step, k, stop_at, args, budget))
                   for k in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        after = scrape(server.port)
        refused = {r: after.get(f"dhrd_refused_requests_total{{reason={r}}}", 0)
                   - before.get(f"dhrd_refused_requests_total{{reason={r}}}", 0)
                   for r in ("queue_full", "deadline", "disconnected")}
        results.append({"clients": n, "seconds": wall, "sent": step.sent, "ok": len(step.latencies),
                        "offered_rps": step.sent / wall, "served_rps": len(step.latencies) / wall,
                        "items_per_s": len(step.latencies) * args.request_size / wall,
                        "p50_s": percentile(step.latencies, 0.5), "p99_s": percentile(step.latencies, 0.99),
                        "errors": dict(step.errors), "server_refused": refused, "rss_mib": server.rss_mib(),
                        "answers": step.answers})
        print(row_line(results[-1]), flush=True)
    return results


def check_answers(lean_dir: str, rows: list[dict], results: list[dict], work: str) -> dict:
    """Every 200 answer against ``dhrd predict`` on the same rows."""
    src, out = os.path.join(work, "rows.jsonl"), os.path.join(work, "predict.jsonl")
    answered = sorted({i for r in results for ids, _ in r["answers"] for i in ids})
    with open(src, "w") as f:
        f.writelines(json.dumps(rows[i]) + "\n" for i in answered)
    subprocess.run([sys.executable, "-m", "dhrd.cli", "predict", lean_dir, "--input", src, "--output", out],
                   check=True, stderr=subprocess.DEVNULL)
    with open(out) as f:
        want = {int(p["id"]): p for p in map(json.loads, f)}
    checked = mismatched = lost = 0
    for r in results:
        for ids, preds in r["answers"]:
            if len(preds) != len(ids):
                lost += abs(len(ids) - len(preds))
            for i, p in zip(ids, preds):
                checked += 1
                ref = want[i]["probs"]
                if max(abs(p["probs"][lab] - ref[lab]) for lab in ref) > TOLERANCE or (
                        p["label"] != want[i]["label"] and abs(max(ref.values()) - min(ref.values())) > TOLERANCE):
                    mismatched += 1
    return {"checked": checked, "mismatched": mismatched, "lost": lost}


HEADER = ("| clients | offered req/s | served req/s | items/s | p50 s | p99 s | errors (client) | "
          "server refused | server RSS MiB |\n|---|---|---|---|---|---|---|---|---|")


def row_line(r: dict) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "-"
    refused = ", ".join(f"{k}: {v:g}" for k, v in r["server_refused"].items() if v) or "-"
    return (f"| {r['clients']} | {r['offered_rps']:.1f} | {r['served_rps']:.1f} | {r['items_per_s']:.1f} | "
            f"{r['p50_s']:.3f} | {r['p99_s']:.3f} | {errors} | {refused} | {r['rss_mib']:.0f} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.make_lean and not os.path.isfile(os.path.join(args.lean_dir, "lean_config.json")):
        from dhrd.export.lean import export_untrained

        print(export_untrained(args.make_lean, args.lean_dir).format(), file=sys.stderr)
    rows = make_rows(args.pool, args.min_words, args.max_words)
    extra = args.serve_args.split()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work, open(os.path.join(work, "serve.log"), "w+") as log:
        server = ServerProcess(args.lean_dir, extra, log)
        try:
            server.wait_ready()
            print(f"dhrd serve {args.lean_dir} {' '.join(extra)}; {args.request_size} rows per request, "
                  f"{args.step_s:g} s per step\n{HEADER}", flush=True)
            results = run_steps(server, rows, args)
        finally:
            code = server.stop()
        check = check_answers(args.lean_dir, rows, results, work)
        log.seek(0)
        traceback_seen = "Traceback" in log.read()
    print(f"\nanswers: {check['checked']} rows in 200 replies checked against dhrd predict: {check['mismatched']} "
          f"mismatched, {check['lost']} lost; server exit code {code} after SIGTERM; tracebacks in its log: "
          f"{'yes' if traceback_seen else 'none'}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"steps": [{k: v for k, v in r.items() if k != "answers"} for r in results], **check,
                       "exit_code": code}, f, indent=1)
    return 0 if check["mismatched"] == 0 and check["lost"] == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
