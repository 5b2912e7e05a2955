"""The resumable rationale generator: read a task file, prompt a teacher, append one
record per example to a JSONL file as each completes.

A kill loses at most the requests in flight (the output logs: :mod:`.generation_log`).
A rerun skips the ids already written, and the ids that already failed unless
``--retry_failures``. Which examples: :mod:`.selection` and :mod:`.shards`; the command
line: :mod:`.generate_cli`; joining shard files: :mod:`.merge`.

Failures (empty text, no end marker, HTTP errors after retries, an unparsable answer in
blind mode, ...) are appended to a failures file with the reason, the detail and the raw
text; the summary counts every selected example once: written, failed (by reason) or
skipped (and why). The failures file is a log: a retried id that fails again appears
again, one that succeeds later stays in it (the summary counts those as recovered).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.errors import DataError
from ..data.pipeline import load_examples
from ..data.rationales import END_MARKER, clean_rationale
from ..data.tasks import Example, Task, get_task
from ..fileio import atomic_write_json
from ..progress import Progress
from . import Completion, Teacher
from .generation_log import JsonlAppender, read_log
from .interrupts import Interrupts
from .prompts import MODES, get_template, match_label, split_answer
from .selection import read_ids, select
from .shards import shard_path

log = logging.getLogger(__name__)


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


def written_ids(cfg: GenerateConfig, prompt_version: str) -> dict[str, int]:
    """{id: line} of the records already in the output (its torn last line cut off): a
    doubled id, or one written with another prompt version, is an error."""
    done: dict[str, int] = {}
    for lineno, row in read_log(cfg.out_path, repair=True):
        if row["id"] in done:
            raise DataError(f"duplicate id {row['id']!r} (first on line {done[row['id']]})",
                            path=cfg.out_path, line=lineno, field="id")
        if row.get("prompt_version") != prompt_version:
            raise DataError(f"written with prompt version {row.get('prompt_version')!r}, this run uses "
                            f"{prompt_version!r}: write to another --out", path=cfg.out_path, line=lineno,
                            field="prompt_version")
        done[row["id"]] = lineno
    return done


def plan(cfg: GenerateConfig, chosen: list[Example], done: dict[str, int], failed_before: set[str],
         summary: Summary) -> list[Example]:
    """The examples to prompt for, counting in ``summary`` those skipped."""
    todo = []
    for ex in chosen:
        if ex.id in done:
            summary.already_written += 1
        elif ex.id in failed_before and not cfg.retry_failures:
            summary.skipped_failed_before += 1
        else:
            todo.append(ex)
    return todo


def run(cfg: GenerateConfig, teacher: Teacher, interrupts: Interrupts | None = None) -> Summary:
    """Generate for every selected example not yet done; returns the summary (also
    written next to the output as <out>.summary.json). ``interrupts``: the run's signal
    state, whose handlers the caller installed (default: a fresh one; Ctrl-C then
    arrives as Python's own KeyboardInterrupt, between records or not)."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    interrupts = interrupts or Interrupts()
    task = get_task(cfg.task)
    template = get_template(task, cfg.mode, cfg.prompt_version)
    examples = load_examples(task, cfg.input, require_labels=cfg.mode == "gold")  # a path, or hub:<split>
    ids = read_ids(cfg.ids_file) if cfg.ids_file else None
    chosen = select(examples, shard=cfg.shard, ids=ids, limit=cfg.limit, ids_source=cfg.ids_file or "ids")
    done = written_ids(cfg, template.version)
    failed_before = {row["id"] for _, row in read_log(cfg.failures_path, repair=True)} - set(done)
    summary = Summary(selected=len(chosen))
    todo = plan(cfg, chosen, done, failed_before, summary)
    log.info("%s: %d selected, %d to generate -> %s", task.name, len(chosen), len(todo), cfg.out_path)
    common = {"teacher": cfg.teacher_name or teacher.name, "prompt_version": template.version, "task": task.name,
              "mode": cfg.mode}
    out = JsonlAppender(cfg.out_path, cfg.fsync)
    failures = JsonlAppender(cfg.failures_path, cfg.fsync)
    bar = Progress(len(todo), f"rationales {task.name}", unit="ex", enabled=cfg.progress)
    retries_before = getattr(teacher, "retries", 0)
    start = time.monotonic()
    try:
        prompts = [template.render(task, ex) for ex in todo]
        for i, completion in teacher.generate(prompts):
            ex = todo[i]
            fields, reason, detail = postprocess(task, ex, completion, mode=cfg.mode,
                                                 require_end_marker=cfg.require_end_marker)
            with interrupts.section():  # a record on disk is always counted in the summary
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
                                             "teacher": common["teacher"], "prompt_version": template.version},
                          indent=2)
    return summary
