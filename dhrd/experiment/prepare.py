"""Carve a task's labelled file into a shuffled train split and a held-out dev split
(fixed seed), keeping each example's id, so one rationale file serves both; optionally
import the released PaLM rationales for it.

A task spec's ``prepare`` section (grid.py):

    prepare:
      source: ${DHRD_DATA}/palm-cot/esnli/esnli_valid.json
      dev_size: 1500
      group_by: premise     # rows sharing this field go to the same side (e-SNLI: 3 hypotheses a premise)
      seed: 0
      palm: {root: ${DHRD_DATA}/palm-cot, split: valid}   # or omit and give rationale_file yourself
      human:                # the rows' own human explanations, as named rationale sources
        human: [explanation_1]                                 # one per example
        human3: [explanation_1, explanation_2, explanation_3]  # k per example (a list each)

with the task's ``rationale_sources: {human: data/esnli/rationales_human.jsonl, ...}``
naming the file each human source is written to.

The train split is shuffled, so ``max_train_examples: N`` takes a random N-subset, and the
smaller subsets are nested in the larger ones (a learning curve compares like with like).
"""

from __future__ import annotations

import json
import os
import random

from ..data.tasks import get_task
from ..jsonl import read_jsonl
from ..teacher.palm_cot import write_records


def _rows(path: str) -> list[tuple[int, dict]]:
    """(position, row) of the non-blank lines, positions as the task reader counts them."""
    return [(i, row) for i, (_, row) in enumerate(read_jsonl(path))]


def carve(task_name: str, source: str, train_out: str, dev_out: str, *, dev_size: int, seed: int = 0,
          group_by: str | None = None) -> dict:
    """Write train_out / dev_out; returns counts. Rows of a task whose ids are row numbers
    get ``idx`` = their row number in ``source`` (the task reader uses it as the id)."""
    task = get_task(task_name)
    rows = _rows(source)
    task.read(source)  # every row valid (a clear file:line error otherwise) before anything is written
    if task.id_key is None:
        rows = [(i, {**row, "idx": row.get("idx", i)}) for i, row in rows]
    groups: dict[str, list[dict]] = {}
    for i, row in rows:
        key = json.dumps(row.get(group_by)) if group_by else str(i)
        if group_by and group_by not in row:
            raise ValueError(f"{source}: row {i} has no field {group_by!r} (prepare.group_by)")
        groups.setdefault(key, []).append(row)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    dev, train = [], []
    for k in keys:
        (dev if len(dev) < dev_size else train).extend(groups[k])
    if not train or len(dev) < dev_size:
        raise ValueError(f"{source}: {len(rows)} rows cannot give a dev split of {dev_size} and a train split")
    random.Random(seed + 1).shuffle(train)
    write_records(dev, dev_out)
    write_records(train, train_out)
    return {"source": source, "rows": len(rows), "train": len(train), "dev": len(dev), "seed": seed,
            "group_by": group_by}


def prepare_task(task_name: str, spec: dict, files: dict) -> dict | None:
    """Run a task's ``prepare`` section once: nothing when its outputs exist already."""
    prep = spec.get("prepare")
    if not prep:
        return None
    human = _human_sources(task_name, spec, prep)
    outs = [files["train_file"], files["eval_file"]] + ([files["rationale_file"]] if prep.get("palm") else [])
    if all(os.path.exists(p) for p in outs + [out for out, _ in human.values()]):
        return None
    if "source" not in prep or "dev_size" not in prep:
        raise ValueError(f"tasks.{task_name}.prepare needs 'source' and 'dev_size'")
    info: dict = {}
    if not all(os.path.exists(p) for p in outs[:2]):
        info = carve(task_name, prep["source"], files["train_file"], files["eval_file"],
                     dev_size=int(prep["dev_size"]), seed=int(prep.get("seed", 0)), group_by=prep.get("group_by"))
    for name, (out, field_names) in human.items():
        if not os.path.exists(out):
            from ..teacher.palm_cot import import_human

            result = import_human(task_name, prep["source"], field_names, f"human:{name}")
            write_records(result.records, out)
            info[f"rationales_{name}"] = {"records": len(result.records), "fields": field_names}
    palm = prep.get("palm")
    if palm and not os.path.exists(files["rationale_file"]):
        if not files.get("rationale_file"):
            raise ValueError(f"tasks.{task_name}: prepare.palm needs a rationale_file to write")
        from ..teacher.palm_cot import RELEASED, import_palm_cot

        rel = RELEASED[task_name]
        split = palm.get("split", "train")
        root = palm["root"]
        result = import_palm_cot(task_name, prep["source"], os.path.join(root, rel.llm_dir), split)
        write_records(result.records, files["rationale_file"])
        info["rationales"] = result.agreement()
    return info


def _human_sources(task_name: str, spec: dict, prep: dict) -> dict[str, tuple[str, list[str]]]:
    """{source: (file to write, row fields)} of ``prepare.human``, checked against the
    task's ``rationale_sources``."""
    human = prep.get("human") or {}
    if not isinstance(human, dict):
        raise ValueError(f"tasks.{task_name}.prepare.human: a mapping of source name to a list of row fields")
    out = {}
    sources = spec.get("rationale_sources") or {}
    for name, field_names in human.items():
        if isinstance(field_names, str):
            field_names = [field_names]
        if not isinstance(field_names, list) or not field_names or not all(isinstance(f, str) for f in field_names):
            raise ValueError(f"tasks.{task_name}.prepare.human.{name}: a list of row fields")
        if name not in sources:
            raise ValueError(f"tasks.{task_name}.prepare.human.{name}: no file for it in the task's "
                             "rationale_sources")
        out[name] = (sources[name], field_names)
    return out
