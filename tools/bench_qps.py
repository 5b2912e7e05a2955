"""Queries per second of three ways to classify with the same decoder on the same inputs:

1. the lean DHRD classifier (dhrd.serve.classifier: length-bucketed batches, one forward, pooled head);
2. CoT decoding as DHRD's own CoT evaluation runs it (dhrd.engine.cot_eval.cot_predict):
   after ``[x + "Let's think step by step, then answer yes or no.", <REASON>]`` batched
   greedy ``generate`` with the KV cache writes a rationale, then one forward scores each
   label's verbalizer after ``<ANS>`` (the answer by likelihood, not parsed from text);
3. the HF pipeline on our export: ``pipeline("text-classification")`` loading the
   ``--format hf`` directory (dhrd.export.hf) of the same decoder with a linear head;
4. with ``--serve``: ``dhrd serve`` over a lean directory written from the same decoder,
   under ``--serve_clients`` concurrent HTTP clients each sending ``--serve_request_size``
   texts per request; the table then adds requests/s and p50/p99 request latency.

Prints a markdown table with QPS, ratios to the lean classifier, batch sizes and the
achieved FLOP/s, counted as 2 x matmul parameters x tokens (decoder weights without the
embedding table; CoT adds the LM-head projection for every generated token; attention's
quadratic term is ignored; CoT's scoring forward counts its tokens with the LM head)
against ``--peak_tflops``. Each time is the best of ``--repeats`` runs with the methods
interleaved (robust to other load on the machine).

    python tools/bench_qps.py --model smollm2 --n 32 --cot_new_tokens 32        # CPU, minutes
    python tools/bench_qps.py --random_init_config llama-3.2-3b --device cuda --dtype bfloat16 \\
        --n 1024 --batch_size 256 --cot_batch_size 64 --peak_tflops 989          # GPU, paper setting

CoT decodes exactly ``--cot_new_tokens`` (default 500, the paper's budget) unless
``--cot_stop_at_eos``: random-init weights never stop, and a fixed length makes runs
comparable.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

from dhrd.engine.cot_eval import cot_predict
from dhrd.model.backbones import RANDOM_INIT_SHAPES, random_init_config
from dhrd.model.dual_head import ClassificationHead
from dhrd.serve.classifier import LeanClassifier
from dhrd.serve.lean_format import LeanConfig

COT_PROMPT = "\nLet's think step by step, then answer yes or no."
WORDS = ("the cat dog sun tree book river stone cloud city road house water light small large old new "
         "because therefore said that which would could there their about after before people").split()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="HF dir, or smollm2 (the packaged SmolLM2-135M-Instruct)")
    p.add_argument("--random_init_config", default=None,
                   help=f"random weights of this shape ({', '.join(RANDOM_INIT_SHAPES)}, or a config.json path)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--task", default="rte")
    p.add_argument("--input_file", default=None, help="task-format JSONL; default synthetic RTE rows")
    p.add_argument("--n", type=int, default=32, help="examples")
    p.add_argument("--min_words", type=int, default=20)
    p.add_argument("--max_words", type=int, default=120)
    p.add_argument("--batch_size", type=int, default=16, help="lean and pipeline batch size")
    p.add_argument("--cot_batch_size", type=int, default=8)
    p.add_argument("--cot_new_tokens", type=int, default=500, help="rationale tokens (paper: 500)")
    p.add_argument("--cot_stop_at_eos", action="store_true")
    p.add_argument("--max_input_len", type=int, default=992)
    p.add_argument("--peak_tflops", type=float, default=None, help="the device's peak, for the %% column")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (best taken)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--skip", default="", help="comma list of methods to skip: lean,cot,pipeline")
    p.add_argument("--serve", action="store_true", help="also measure dhrd serve over HTTP on a lean directory")
    p.add_argument("--serve_clients", type=int, default=8, help="concurrent HTTP clients")
    p.add_argument("--serve_request_size", type=int, default=4, help="texts per request")
    p.add_argument("--serve_timeout", type=float, default=600, help="seconds for the server to start")
    p.add_argument("--json_out", default=None)
    return p.parse_args(argv)


def load_models(args):
    """(causal LM, tokenizer) on the device; the tokenizer of --model also for random init."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dhrd.model.backbones import resolve_model_path

    dtype = getattr(torch, args.dtype)
    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if args.random_init_config:
        cfg = random_init_config(args.random_init_config)
        cfg.pad_token_id = tok.pad_token_id
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                     trust_remote_code=False).to(args.device)
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def inputs(args) -> list[str]:
    from dhrd.data.tasks import get_task

    task = get_task(args.task)
    if args.input_file:
        return [e.text for e in task.read(args.input_file, require_labels=False)][: args.n]
    rng = random.Random(0)
    rows = [{"idx": i,
             "premise": " ".join(rng.choice(WORDS) for _ in range(rng.randint(args.min_words, args.max_words))),
             "hypothesis": " ".join(rng.choice(WORDS) for _ in range(8))} for i in range(args.n)]
    return [task.render(r) for r in rows]


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def lean_classifier(model, tok, args) -> LeanClassifier:
    """The causal LM's own decoder module with a random head, as a lean classifier."""
    task_labels = ["entailment", "not_entailment"]
    head = ClassificationHead(model.config.hidden_size, 2).to(device=args.device, dtype=model.dtype)
    cfg = LeanConfig(task=args.task, labels=task_labels, verbalizers=["yes", "no"], pooling="last",
                     max_input_len=args.max_input_len, num_labels=2, head_inner_size=model.config.hidden_size,
                     dtype=args.dtype)
    return LeanClassifier(getattr(model, model.base_model_prefix), head, tok, cfg, args.device)


def bench_lean(model, tok, texts, args):
    """The lean classifier over the causal LM's own decoder module, random head."""
    clf = lean_classifier(model, tok, args)
    clf.predict(texts[: args.batch_size], args.batch_size)  # warm-up
    tokens = sum(map(len, clf.encode(texts)))
    return {"method": "lean DHRD classifier", "batch": args.batch_size, "tokens": tokens, "generated": 0}, \
        lambda: clf.predict(texts, args.batch_size)


def bench_pipeline(model, tok, texts, args, cleanup: contextlib.ExitStack):
    """transformers' text-classification pipeline on our ``--format hf`` export of the same
    decoder (a random linear head), loaded from disk as a user of the export would."""
    from transformers import pipeline

    from dhrd.data.tasks import get_task
    from dhrd.export.hf import sequence_classifier
    from dhrd.export.lean import Trained
    from dhrd.model.dual_head import DualHeadModel

    dual = DualHeadModel(model, len(get_task(args.task).labels), head="linear")
    trained = Trained(source=None, model=dual, tokenizer=tok, task=get_task(args.task),
                      max_input_len=args.max_input_len, special={}, lora=False)
    seq, hf_tok, _ = sequence_classifier(trained, args.dtype)
    out = tempfile.mkdtemp(prefix="bench-hf-")
    cleanup.callback(shutil.rmtree, out, ignore_errors=True)
    seq.save_pretrained(out)
    hf_tok.save_pretrained(out)
    del seq, dual
    pipe = pipeline("text-classification", model=out, device=torch.device(args.device),
                    dtype=getattr(torch, args.dtype), batch_size=args.batch_size, top_k=None)
    pipe(texts[: args.batch_size])  # warm-up
    tokens = sum(len(hf_tok(t)["input_ids"]) for t in texts)
    return {"method": "HF pipeline on the --format hf export", "batch": args.batch_size, "tokens": tokens,
            "generated": 0}, lambda: pipe(texts)


def start_server(lean_dir: str, args, cleanup: contextlib.ExitStack) -> int:
    """``dhrd serve`` on ``lean_dir`` in a child process, ready; stopped by ``cleanup``."""
    from dhrd.fileio import free_port

    port = free_port()
    log = cleanup.enter_context(tempfile.TemporaryFile("w+"))
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    cmd = [sys.executable, "-m", "dhrd.cli", "serve", lean_dir, "--port", str(port), "--device", args.device,
           "--dtype", args.dtype, "--max_batch_size", str(args.batch_size),
           "--max_items", str(args.serve_request_size)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def stop():
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    cleanup.callback(stop)
    deadline = time.monotonic() + args.serve_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise ValueError(f"dhrd serve exited with {proc.returncode}: {log.read().strip()[-2000:]}")
        with contextlib.suppress(OSError):
            if post(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "GET", "/health")[0] == 200:
                return port
        time.sleep(0.2)
    raise ValueError(f"dhrd serve not ready after {args.serve_timeout} s")


def post(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def load_test(port: int, requests: list[list[str]], clients: int) -> list[float]:
    """Each request's latency (seconds), ``clients`` threads on keep-alive connections
    taking the requests in turn; any answer but 200 with one prediction per text fails."""
    todo, lock, latencies, errors = iter(requests), threading.Lock(), [], []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            while not errors:
                with lock:
                    texts = next(todo, None)
                if texts is None:
                    return
                t0 = time.perf_counter()
                status, reply = post(conn, "POST", "/v1/classify", {"texts": texts})
                if status != 200 or len(reply.get("predictions", ())) != len(texts):
                    errors.append(f"HTTP {status}: {str(reply)[:300]}")
                with lock:
                    latencies.append(time.perf_counter() - t0)
        except OSError as e:
            errors.append(repr(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"dhrd serve load test failed: {errors[0]}")
    return latencies


def bench_serve(model, tok, texts, args, cleanup: contextlib.ExitStack):
    """``dhrd serve`` on a lean directory written from the same decoder (random head)."""
    from types import SimpleNamespace

    from dhrd.export.lean import write_lean

    clf = lean_classifier(model, tok, args)
    lean_dir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bench-serve-"))
    write_lean(SimpleNamespace(backbone=model, head=clf.head), tok, clf.config, lean_dir)
    port = start_server(lean_dir, args, cleanup)
    size = args.serve_request_size
    requests = [texts[i:i + size] for i in range(0, len(texts), size)]
    load_test(port, requests[: args.serve_clients], args.serve_clients)  # warm-up
    row = {"method": f"dhrd serve, HTTP ({args.serve_clients} clients x {size} texts per request)",
           "batch": args.batch_size, "tokens": sum(map(len, clf.encode(texts))), "generated": 0,
           "requests": len(requests), "latencies": []}

    def run():
        row["latencies"] += load_test(port, requests, args.serve_clients)

    return row, run


def _cot_batch(model, builder, special, ids, n: int, args) -> tuple[list[int], dict]:
    """One batch of DHRD's CoT evaluation: (predicted labels, token counts: prompt,
    generated, and scored by the answer-likelihood forward)."""
    res = cot_predict(model, ids, builder.answers, reason_id=special.reason, ans_id=special.answer,
                      pad_id=builder.tok.pad_token_id, eos_id=builder.tok.eos_token_id, max_new_tokens=n,
                      device=args.device, min_new_tokens=None if args.cot_stop_at_eos else n)
    prompt = [len(x) + 1 for x in ids]  # x, <REASON>
    scored = sum(len(a) + p + len(r) + 1 for p, r in zip(prompt, res.rationales) for a in builder.answers)
    generated = sum(min(len(r) + 1, n) for r in res.rationales)  # the stop token where one came
    return res.predictions, {"tokens": sum(prompt) + scored, "generated": generated, "scored": scored}


def bench_cot(model, tok, texts, args):
    """CoT decoding through dhrd.engine.cot_eval: ``<REASON>``/``<ANS>`` are added to the
    tokenizer and model (mean-initialised rows, as training adds them)."""
    from dhrd.data.sequences import SequenceBuilder, SequenceSpec
    from dhrd.model.dual_head import add_reasoning_tokens

    bs = args.cot_batch_size
    special = add_reasoning_tokens(tok, model)
    builder = SequenceBuilder(tok, special.reason, special.answer, ("yes", "no"),
                              SequenceSpec(max_seq_len=args.max_input_len, max_input_len=args.max_input_len))
    ids = builder.input_ids_batch([t + COT_PROMPT for t in texts])
    _cot_batch(model, builder, special, ids[:bs], 2, args)  # warm-up
    row = {"method": f"CoT decoding ({args.cot_new_tokens} new tokens, greedy, KV cache, answer by likelihood)",
           "batch": bs, "tokens": 0, "generated": 0, "scored": 0}

    def run():
        row.update(tokens=0, generated=0, scored=0)
        for i in range(0, len(ids), bs):
            _, counts = _cot_batch(model, builder, special, ids[i:i + bs], args.cot_new_tokens, args)
            for key, value in counts.items():
                row[key] += value

    return row, run


def matmul_params(model) -> tuple[int, int]:
    """(decoder weights without the embedding table, LM-head weights)."""
    decoder = getattr(model, model.base_model_prefix)
    emb = decoder.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in decoder.parameters()) - emb, model.get_output_embeddings().weight.numel()


def serve_cells(r) -> str:
    """requests/s and p50/p99 latency (over every timed run's requests) of a served row."""
    if "latencies" not in r:
        return " - | - | - |"
    lat = sorted(r["latencies"])
    r["requests_per_s"] = r["requests"] / r["seconds"]
    r["p50_ms"], r["p99_ms"] = (1000 * lat[min(len(lat) - 1, int(q * len(lat)))] for q in (0.5, 0.99))
    return f" {r['requests_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |"


def table(rows, n, args, body, lm_head) -> str:
    lean = next((r for r in rows if r["method"].startswith("lean")), None)
    lines = ["| method | batch | examples | seconds | QPS | lean / method | TFLOP/s"
             + (" | % of peak |" if args.peak_tflops else " |")
             + (" requests/s | p50 ms | p99 ms |" if args.serve else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if args.peak_tflops else "")
             + ("---|---|---|" if args.serve else "")]
    for r in rows:
        r["qps"] = n / r["seconds"]
        flops = 2 * body * (r["tokens"] + r["generated"]) + 2 * lm_head * (r["generated"] + r.get("scored", 0))
        r["tflops"] = flops / r["seconds"] / 1e12
        ratio = f"{lean['qps'] / r['qps']:.2f}x" if lean else "-"
        line = (f"| {r['method']} | {r['batch']} | {n} | {r['seconds']:.2f} | {r['qps']:.2f} | {ratio} | "
                f"{r['tflops']:.4f} |")
        if args.peak_tflops:
            line += f" {100 * r['tflops'] / args.peak_tflops:.2f}% |"
        if args.serve:
            line += serve_cells(r)
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_models(args)
    texts = inputs(args)
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    skip = set(filter(None, args.skip.split(",")))
    benches = [b for name, b in (("lean", bench_lean), ("pipeline", bench_pipeline), ("cot", bench_cot))
               if name not in skip]
    with torch.inference_mode(), contextlib.ExitStack() as cleanup:
        prepared = [bench(model, tok, texts, args, cleanup) if bench is bench_pipeline
                    else bench(model, tok, texts, args) for bench in benches]
        if args.serve:
            prepared.append(bench_serve(model, tok, texts, args, cleanup))
        rows = [row for row, _ in prepared]
        # methods interleaved, best of --repeats: robust to other load on shared machines
        for _ in range(args.repeats):
            for row, run in prepared:
                sec, _ = timed(run, args.device)
                row["seconds"] = min(row.get("seconds", float("inf")), sec)
                row.setdefault("all_seconds", []).append(round(sec, 3))
                print(f"{row['method']}: {sec:.2f} s", file=sys.stderr, flush=True)
    body, lm_head = matmul_params(model)
    name = args.random_init_config and f"random-init {args.random_init_config}" or args.model
    print(f"model {name} ({(body + lm_head) / 1e6:.1f}M matmul params), device {args.device}, {args.dtype}, "
          f"torch threads {torch.get_num_threads()}; {len(texts)} {args.task} inputs, tokens per input "
          f"min {min(lengths)} / median {statistics.median(lengths):.0f} / max {max(lengths)}\n")
    print(table(rows, len(texts), args, body, lm_head))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    from dhrd.cli_errors import run_main

    sys.exit(run_main("bench_qps.py", main))
