"""``dhrd rationales generate``: the command line of the generator (:mod:`.generate`):
its arguments, the teacher they describe (a local model or an endpoint), and the run's
signal handling (SIGTERM from Slurm preemption or a timeout ends the run like Ctrl-C:
summary, exit code 130)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..data.rationales import END_MARKER
from ..logs import setup as setup_logging
from ..progress import quiet_library_bars
from . import Teacher, generate
from .generate import GenerateConfig, run
from .interrupts import Interrupts
from .prompts import MODES
from .shards import parse_shard


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhrd rationales generate", description=generate.__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--input", required=True, help="the task's JSONL file, or hub:<split> (e.g. hub:train)")
    p.add_argument("--out", required=True, help="rationale JSONL, appended to")
    p.add_argument("--failures", help="failures JSONL (default: <out>.failures.jsonl)")
    p.add_argument("--mode", choices=MODES, default="gold")
    p.add_argument("--prompt_version", help="default: the newest for the task and mode")
    p.add_argument("--no_end_marker_required", dest="require_end_marker", action="store_false",
                   help=f"accept text without {END_MARKER} (cut there if present)")
    p.add_argument("--shard", help="i/n, or 'auto' from RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS")
    p.add_argument("--ids_file", help="only these ids, one per line")
    p.add_argument("--limit", type=int, help="only the first N selected examples")
    p.add_argument("--retry_failures", action="store_true", help="try again the ids that failed before")
    p.add_argument("--teacher_name", help="the 'teacher' field (default hf:<model> or openai:<model>)")
    p.add_argument("--no_progress", dest="progress", action="store_false")
    p.add_argument("-v", "--verbose", action="store_true", help="INFO messages too (else WARNING, or DHRD_LOG_LEVEL)")

    g = p.add_argument_group("teacher (local HF model unless --base_url is given)")
    g.add_argument("--model", required=True, help="local: HF dir or a .gguf path; endpoint: the model name")
    g.add_argument("--max_new_tokens", type=int, default=500)
    g.add_argument("--temperature", type=float, default=0.1, help="0: greedy")
    g.add_argument("--top_p", type=float, default=0.7)
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("local teacher")
    g.add_argument("--gguf_file", help="GGUF file inside --model")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto")
    g.add_argument("--batch_size", type=int, default=8)
    g.add_argument("--chat_template", choices=("auto", "yes", "no"), default="auto")
    g.add_argument("--max_prompt_tokens", type=int)
    g.add_argument("--threads", type=int, help="torch CPU threads (a busy shared machine: try 1)")

    g = p.add_argument_group("OpenAI-compatible endpoint")
    g.add_argument("--base_url", help="e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--api", choices=("chat", "completions"), default="chat")
    g.add_argument("--api_key_env", default="OPENAI_API_KEY", help="NAME of the variable holding the key")
    g.add_argument("--concurrency", type=int, default=8)
    g.add_argument("--timeout", type=float, default=120.0)
    g.add_argument("--max_retries", type=int, default=6)
    g.add_argument("--backoff_base", type=float, default=1.0)
    g.add_argument("--backoff_max", type=float, default=60.0)
    g.add_argument("--extra_body", type=json.loads, default={}, help="JSON merged into each request body")
    return p


def build_teacher(args: argparse.Namespace) -> Teacher:
    if args.base_url:
        from .openai_endpoint import EndpointConfig, EndpointTeacher

        return EndpointTeacher(EndpointConfig(
            base_url=args.base_url, model=args.model, api=args.api, api_key_env=args.api_key_env,
            concurrency=args.concurrency, timeout=args.timeout, max_retries=args.max_retries,
            backoff_base=args.backoff_base, backoff_max=args.backoff_max, max_tokens=args.max_new_tokens,
            temperature=args.temperature, top_p=args.top_p, seed=args.seed, extra_body=args.extra_body))
    from .local import LocalTeacher, LocalTeacherConfig

    return LocalTeacher(LocalTeacherConfig(
        model=args.model, gguf_file=args.gguf_file, device=args.device, dtype=args.dtype,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, max_prompt_tokens=args.max_prompt_tokens, threads=args.threads,
        chat_template={"auto": None, "yes": True, "no": False}[args.chat_template]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO if args.verbose else os.environ.get("DHRD_LOG_LEVEL") or logging.WARNING)
    cfg = GenerateConfig(task=args.task, input=args.input, out=args.out, mode=args.mode,
                         prompt_version=args.prompt_version, require_end_marker=args.require_end_marker,
                         failures=args.failures, shard=parse_shard(args.shard), ids_file=args.ids_file,
                         limit=args.limit, retry_failures=args.retry_failures,
                         teacher_name=args.teacher_name, progress=args.progress)
    interrupts = Interrupts()
    interrupts.install()
    quiet_library_bars()  # in a log: no tqdm bar of the model load
    teacher = build_teacher(args)
    try:
        summary = run(cfg, teacher, interrupts)
    finally:
        teacher.close()
    print(f"{cfg.out_path}\n{summary.format()}", file=sys.stderr)
    return 130 if summary.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
