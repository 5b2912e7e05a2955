"""The resumable rationale generator: read a task file, prompt a teacher, append one
record per example to a JSONL file as each completes.

Crash safety: each record is one ``write`` of a full line, flushed and fsync'd before
the next, so a kill loses at most the requests in flight. A kill in the middle of a
write leaves a last line without its newline; the next run cuts it off (it was never
complete) and regenerates that id, so no id is ever written twice. A rerun skips the
ids already written, and the ids that already failed unless ``--retry_failures``.

Failures (empty text, no end marker, HTTP errors after retries, an unparsable answer in
blind mode, ...) are appended to a failures file with the reason, the detail and the raw
text; the summary counts every selected example once: written, failed (by reason) or
skipped (and why). The failures file is a log: a retried id that fails again appears
again, one that succeeds later stays in it (the summary counts those as recovered).

Sharding (``--shard i/n``): ids go to shards by a stable hash, so shards are disjoint and
together complete whatever the file order, and each shard writes its own file
(``out.shard-i-of-n.jsonl``). Separate files need no locking, which is unreliable on
the network file systems clusters use; ``dhrd rationales merge`` joins them and checks
that no id is missing or doubled.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.errors import DataError
from ..data.pipeline import load_examples
from ..data.rationales import END_MARKER, clean_rationale
from ..data.tasks import Example, Task, get_task, read_examples
from ..fileio import atomic_write_json, atomic_write_jsonl, repair_jsonl_tail
from ..progress import Progress, quiet_library_bars
from . import Completion, Teacher
from .prompts import MODES, get_template, match_label, split_answer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Append-only JSONL with crash repair.

def scan_jsonl(path: str, *, repair: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for each record of an append-only log; a missing file is empty.
    A last line without its newline is a write cut by a kill: it is skipped, and with
    ``repair`` also cut off the file (before appending to it). Any other malformed line
    is an error, since no interrupted append makes one."""
    if not os.path.exists(path):
        return []
    if repair:
        cut = repair_jsonl_tail(path)
        if cut:
            log.warning("%s: cut a truncated last line (%d bytes) left by an interrupted run", path, cut)
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: ignoring a truncated last line (%d bytes) left by an interrupted run",
                    path, len(data) - keep)
        data = data[:keep]
    rows = []
    for lineno, line in enumerate(data.split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"malformed JSON ({e}); only a truncated LAST line is repaired automatically",
                            path=path, line=lineno) from None
        if isinstance(row, dict) and type(row.get("id")) is int:
            row["id"] = str(row["id"])  # as the training pipeline's reader takes it
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise DataError("expected an object with a string 'id'", path=path, line=lineno, field="id")
        rows.append((lineno, row))
    return rows


class JsonlAppender:
    """Appends whole lines; each is flushed and fsync'd before ``write`` returns."""

    def __init__(self, path: str, fsync: bool = True):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path, self.fsync = path, fsync
        self._f = open(path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


# ---------------------------------------------------------------------------------------
# Selecting the examples.

def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """"i/n" (0-based), "auto" (RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS; none set:
    no sharding) or None."""
    if spec is None:
        return None
    if spec == "auto":
        env = os.environ
        for rank, size in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
            if rank in env and size in env:
                return parse_shard(f"{env[rank]}/{env[size]}") if int(env[size]) > 1 else None
        return None
    try:
        i, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be i/n, e.g. 0/4; got {spec!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {spec}: need 0 <= i < n")
    return i, n


def shard_of(example_id: str, n: int) -> int:
    """Stable across runs, machines and Python versions (unlike hash())."""
    return int.from_bytes(hashlib.sha1(example_id.encode("utf-8")).digest()[:8], "big") % n


def shard_path(path: str, shard: tuple[int, int] | None) -> str:
    if shard is None:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.shard-{shard[0]}-of-{shard[1]}{ext or '.jsonl'}"


def read_ids(path: str) -> list[str]:
    """One id per line (blank lines ignored): what ``dhrd rationales check
    --regenerate_ids`` writes."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def select(examples: Sequence[Example], *, shard: tuple[int, int] | None = None,
           ids: Iterable[str] | None = None, limit: int | None = None,
           ids_source: str = "ids") -> list[Example]:
    chosen = list(examples)
    if ids is not None:
        wanted = set(ids)
        unknown = wanted - {ex.id for ex in chosen}
        if unknown:
            raise DataError(f"{len(unknown)} id(s) not in the task file, e.g. {sorted(unknown)[:3]}",
                            path=ids_source)
        chosen = [ex for ex in chosen if ex.id in wanted]
    if shard is not None:
        chosen = [ex for ex in chosen if shard_of(ex.id, shard[1]) == shard[0]]
    return chosen[:limit] if limit is not None else chosen


# ---------------------------------------------------------------------------------------
# The run.

@dataclass
class GenerateConfig:
    task: str
    input: str  # the task's JSONL file
    out: str  # rationale JSONL (with --shard: out.shard-i-of-n.jsonl)
    mode: str = "gold"  # gold: explain the given label (the paper); blind: answer, parsed to teacher_label
    prompt_version: str | None = None  # None: the newest for the task and mode
    require_end_marker: bool = True  # text without the end marker fails as 'no_end_marker'
    failures: str | None = None  # default: <out>.failures.jsonl
    shard: tuple[int, int] | None = None
    ids_file: str | None = None  # only these ids (e.g. the ones whose teacher label disagreed)
    limit: int | None = None  # only the first N selected examples (file order)
    retry_failures: bool = False
    teacher_name: str | None = None  # default: the teacher's own name
    progress: bool = True
    fsync: bool = True

    @property
    def out_path(self) -> str:
        return shard_path(self.out, self.shard)

    @property
    def failures_path(self) -> str:
        if self.failures:
            return shard_path(self.failures, self.shard)
        root, ext = os.path.splitext(self.out_path)
        return f"{root}.failures{ext or '.jsonl'}"

    @property
    def summary_path(self) -> str:
        return os.path.splitext(self.out_path)[0] + ".summary.json"


@dataclass
class Summary:
    selected: int = 0
    already_written: int = 0
    skipped_failed_before: int = 0
    attempted: int = 0
    written: int = 0
    recovered: int = 0  # written now after failing in an earlier run
    failed: Counter = field(default_factory=Counter)  # reason -> count
    not_attempted: int = 0  # interrupted before these were sent or finished
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def format(self) -> str:
        rate = self.completion_tokens / self.seconds if self.seconds else 0.0
        lines = [f"selected {self.selected}: already written {self.already_written}, "
                 f"skipped (failed before) {self.skipped_failed_before}, attempted {self.attempted}",
                 f"written {self.written} (recovered {self.recovered}), failed {sum(self.failed.values())}"
                 + (f", not attempted {self.not_attempted} (interrupted)" if self.interrupted else ""),
                 f"tokens: prompt {self.prompt_tokens}, completion {self.completion_tokens} "
                 f"in {self.seconds:.1f}s ({rate:.1f} completion tok/s, "
                 f"{self.attempted / self.seconds if self.seconds else 0:.2f} ex/s); retries {self.retries}"]
        if self.failed:
            lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in self.failed.most_common()))
        return "\n".join(lines)


def postprocess(task: Task, example: Example, completion: Completion, *, mode: str,
                require_end_marker: bool) -> tuple[dict[str, Any] | None, str | None, str]:
    """(record fields, None, "") on success; (None, reason, detail) on failure."""
    if completion.error:
        return None, completion.error.split(":", 1)[0], completion.error
    raw = completion.text
    if not raw.strip():
        return None, "empty", f"finish_reason={completion.finish_reason}"
    if require_end_marker and END_MARKER not in raw:
        return None, "no_end_marker", f"finish_reason={completion.finish_reason}"
    text = clean_rationale(raw)
    teacher_label = None
    if mode == "blind":
        text, answer = split_answer(text)
        label = match_label(task, answer, example.fields)
        if label is None:
            return None, "unparsable_label", f"answer={answer!r}"
        teacher_label = task.labels[label]
    if not text:
        return None, "empty", "nothing left after cleaning"
    fields = {"rationale": text, "teacher_label": teacher_label}
    if example.label is not None:
        fields["gold_label"] = task.labels[example.label]
    fields["end_marker"] = END_MARKER in raw  # False only with require_end_marker off
    fields["finish_reason"] = completion.finish_reason
    fields["completion_tokens"] = completion.completion_tokens
    return fields, None, ""


def run(cfg: GenerateConfig, teacher: Teacher) -> Summary:
    """Generate for every selected example not yet done; returns the summary (also
    written next to the output as <out>.summary.json)."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    task = get_task(cfg.task)
    template = get_template(task, cfg.mode, cfg.prompt_version)
    examples = load_examples(task, cfg.input, require_labels=cfg.mode == "gold")  # a path, or hub:<split>
    ids = read_ids(cfg.ids_file) if cfg.ids_file else None
    chosen = select(examples, shard=cfg.shard, ids=ids, limit=cfg.limit, ids_source=cfg.ids_file or "ids")
    teacher_name = cfg.teacher_name or teacher.name

    done: dict[str, int] = {}
    for lineno, row in scan_jsonl(cfg.out_path, repair=True):
        if row["id"] in done:
            raise DataError(f"duplicate id {row['id']!r} (first on line {done[row['id']]})",
                            path=cfg.out_path, line=lineno, field="id")
        if row.get("prompt_version") != template.version:
            raise DataError(f"written with prompt version {row.get('prompt_version')!r}, this run uses "
                            f"{template.version!r}: write to another --out", path=cfg.out_path, line=lineno,
                            field="prompt_version")
        done[row["id"]] = lineno
    failed_before = {row["id"] for _, row in scan_jsonl(cfg.failures_path, repair=True)} - set(done)

    summary = Summary(selected=len(chosen))
    todo = []
    for ex in chosen:
        if ex.id in done:
            summary.already_written += 1
        elif ex.id in failed_before and not cfg.retry_failures:
            summary.skipped_failed_before += 1
        else:
            todo.append(ex)
    log.info("%s: %d selected, %d to generate -> %s", task.name, len(chosen), len(todo), cfg.out_path)

    out = JsonlAppender(cfg.out_path, cfg.fsync)
    failures = JsonlAppender(cfg.failures_path, cfg.fsync)
    bar = Progress(len(todo), f"rationales {task.name}", unit="ex", enabled=cfg.progress)
    retries_before = getattr(teacher, "retries", 0)
    start = time.monotonic()
    common = {"teacher": teacher_name, "prompt_version": template.version, "task": task.name, "mode": cfg.mode}
    try:
        prompts = [template.render(task, ex) for ex in todo]
        for i, completion in teacher.generate(prompts):
            ex = todo[i]
            fields, reason, detail = postprocess(task, ex, completion, mode=cfg.mode,
                                                 require_end_marker=cfg.require_end_marker)
            with record_section():  # a record on disk is always counted in the summary
                summary.attempted += 1
                summary.prompt_tokens += completion.prompt_tokens
                summary.completion_tokens += completion.completion_tokens
                if fields is not None:
                    out.write({"id": ex.id, **fields, **common})
                    summary.written += 1
                    summary.recovered += ex.id in failed_before
                else:
                    failures.write({"id": ex.id, "reason": reason, "detail": detail, **common,
                                    "finish_reason": completion.finish_reason,
                                    "text": completion.text[:2000], "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
                    summary.failed[reason] += 1
            elapsed = max(time.monotonic() - start, 1e-9)
            bar.update(1, written=summary.written, failed=sum(summary.failed.values()),
                       **{"tok/s": round(summary.completion_tokens / elapsed)})
    except KeyboardInterrupt:
        summary.interrupted = True
        log.warning("interrupted: every finished record is on disk; rerun the same command to resume")
    finally:
        summary.seconds = time.monotonic() - start
        summary.retries = getattr(teacher, "retries", 0) - retries_before
        summary.not_attempted = len(todo) - summary.attempted
        bar.close()
        out.close()
        failures.close()
        atomic_write_json(cfg.summary_path, {**asdict(summary), "failed": dict(summary.failed), "config": asdict(cfg),
                                             "teacher": teacher_name, "prompt_version": template.version}, indent=2)
    return summary


# ---------------------------------------------------------------------------------------
# Command line.

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhrd rationales generate", description=__doc__.split("\n\n")[0],
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
    p.add_argument("-v", "--verbose", action="store_true")

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


_SECTION = {"depth": 0, "pending": False, "interrupted": False}


def _interrupt(signum, frame):
    """SIGINT/SIGTERM: stop like Ctrl-C, but never between writing a record and counting
    it (inside ``record_section`` the interrupt waits for the section's end). Only the
    first signal counts: a second one (Slurm signals the job's processes and the job
    script forwards to them too) must not cut the summary short."""
    if _SECTION["interrupted"]:
        return
    if _SECTION["depth"]:
        _SECTION["pending"] = True
        return
    _SECTION["interrupted"] = True
    raise KeyboardInterrupt


def reset_interrupts() -> None:
    """A new run: no signal seen yet."""
    _SECTION.update(depth=0, pending=False, interrupted=False)


@contextlib.contextmanager
def record_section():
    _SECTION["depth"] += 1
    try:
        yield
    finally:
        _SECTION["depth"] -= 1
        if not _SECTION["depth"] and _SECTION["pending"]:
            _SECTION["pending"], _SECTION["interrupted"] = False, True
            raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = GenerateConfig(task=args.task, input=args.input, out=args.out, mode=args.mode,
                         prompt_version=args.prompt_version, require_end_marker=args.require_end_marker,
                         failures=args.failures, shard=parse_shard(args.shard), ids_file=args.ids_file,
                         limit=args.limit, retry_failures=args.retry_failures,
                         teacher_name=args.teacher_name, progress=args.progress)
    # SIGTERM (Slurm preemption, timeouts) ends the run like Ctrl-C: summary, exit code 130
    reset_interrupts()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    quiet_library_bars()  # in a log: no tqdm bar of the model load
    teacher = build_teacher(args)
    try:
        summary = run(cfg, teacher)
    finally:
        teacher.close()
    print(f"{cfg.out_path}\n{summary.format()}", file=sys.stderr)
    return 130 if summary.interrupted else 0


# ---------------------------------------------------------------------------------------
# Merging shard files (and regenerated subsets).

def merge(inputs: Sequence[str], out: str, *, replace: bool = False,
          expected_ids: Iterable[str] | None = None) -> dict[str, int]:
    """Join rationale files into ``out`` (written to a temporary file, then renamed).
    A doubled id is an error, unless ``replace``: then a later file's record replaces an
    earlier one's (how regenerated ids replace the first attempt). With
    ``expected_ids``, ids missing from all inputs are an error."""
    merged: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    replaced = 0
    for path in inputs:
        if not os.path.exists(path):
            raise DataError("no such file", path=path)
        for lineno, row in scan_jsonl(path):
            rid = row["id"]
            if rid in merged:
                if not replace:
                    raise DataError(f"id {rid!r} also at {where[rid]} (shards must be disjoint; "
                                    "--replace lets later files win)", path=path, line=lineno, field="id")
                replaced += 1
                del merged[rid]  # re-insert: the order follows the file that won
            merged[rid], where[rid] = row, f"{path}:{lineno}"
    missing = []
    if expected_ids is not None:
        missing = [i for i in expected_ids if i not in merged]
        if missing:
            raise DataError(f"{len(missing)} id(s) missing from all inputs, e.g. {missing[:3]}", path=out)
    atomic_write_jsonl(out, merged.values())
    return {"records": len(merged), "replaced": replaced, "inputs": len(inputs)}


def merge_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dhrd rationales merge",
                                description="Join shard (or regenerated) rationale files into one.")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--replace", action="store_true", help="a later file's record replaces an earlier one's")
    p.add_argument("--task", help="with --input: check that every id of the task file is there")
    p.add_argument("--input", help="the task's JSONL file")
    args = p.parse_args(argv)
    expected = None
    if args.task and args.input:
        expected = [ex.id for ex in read_examples(args.task, args.input, require_labels=False)]
    stats = merge(args.inputs, args.out, replace=args.replace, expected_ids=expected)
    print(f"{args.out}: {stats['records']} records from {stats['inputs']} files"
          + (f", {stats['replaced']} replaced" if stats["replaced"] else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
