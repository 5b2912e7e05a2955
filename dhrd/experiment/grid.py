"""Experiment grids: a YAML file -> the list of runs it asks for.

    name: cpu_small
    model: smollm2                   # any --model value
    common: {lr: 5.0e-5, epochs: 1}  # trainer arguments of every run
    presets: {dhrd: {alpha: 1.0}}    # optional: what a --method preset meant for these runs
    seeds: [0, 1, 2]
    tasks:
      esnli: {train_file: data/esnli/train.jsonl, eval_file: data/esnli/dev.jsonl,
              rationale_file: data/esnli/rationales.jsonl, prepare: {...}}   # prepare: optional, carve.py
    blocks:                          # each block: methods x seeds x the product of its axes
      - {methods: [pooled, dhrd], axes: {max_train_examples: [500, 2000]}}
      - {methods: [label_only, shuffled], axes: {max_train_examples: [2000]}, tasks: [esnli]}

A run is (task, method, seed, overrides); its name is derived from those, so the same run
in two blocks is one run, and a grid file can grow without renaming finished runs.
``presets`` pins settings of a method's preset for this grid (they do not enter the names):
when ``--method dhrd``'s default moves on with new evidence, a grid's finished dhrd runs
still name the recipe they trained, and new seeds of them train that recipe too. Paths
are relative to the grid file's folder and may use ``${VAR}`` environment variables
(``${DHRD_DATA:-../shared/data}`` style defaults too).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

from ..config import ARG_CLASSES, METHODS

PATH_KEYS = ("train_file", "eval_file", "rationale_file", "model", "ds_config")
# fields the harness owns: a grid setting them would break resume or the output tree
RESERVED = ("output_dir", "resume", "seed", "method", "task", "config", "train_file", "eval_file",
            "rationale_file")
SHORT = {"max_train_examples": "n", "alpha": "a", "beta": "b", "lr": "lr", "epochs": "ep", "lora": "lora",
         "label_consistency": "cons", "rationale_fraction": "frac", "lm_sections": "lm", "alpha_schedule": "sched",
         "lr_schedule": "lrs", "rationales": "rat",
         "alpha_switch_fraction": "sw", "rationales_per_example": "k"}
# axes the harness resolves itself (not trainer arguments): ``rationales`` picks one of the
# task's named rationale files (``rationale_sources``; the task's own ``rationale_file`` is
# the source named by ``rationale_source``, default "palm")
HARNESS_AXES = ("rationales",)


class GridError(ValueError):
    pass


@dataclass(frozen=True)
class Run:
    task: str
    method: str
    seed: int
    overrides: tuple[tuple[str, Any], ...] = ()  # sorted (field, value) pairs of the block axes
    files: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # train/eval/rationale paths
    task_args: tuple[tuple[str, Any], ...] = field(default=(), compare=False)  # the task's own settings

    @property
    def name(self) -> str:
        parts = [self.task, self.method]
        parts += [_part(k, v) for k, v in self.overrides]
        return "-".join(parts) + f"-s{self.seed}"

    @property
    def variant(self) -> str:
        """The run's name without the seed: what seeds are averaged over."""
        return self.name.rsplit("-s", 1)[0]

    def args(self, grid: "Grid", output_dir: str) -> dict[str, Any]:
        """Every trainer argument of this run (common < the grid's pins of its method's preset <
        the task's settings < block axes)."""
        out = {**grid.common, **grid.presets.get(self.method, {}), "model": grid.model, **dict(self.task_args),
               **dict(self.files), "task": self.task, "method": self.method,
               "seed": self.seed, **{k: v for k, v in self.overrides if k not in HARNESS_AXES},
               "output_dir": output_dir}
        return out


@dataclass
class Grid:
    name: str
    model: str
    path: str
    common: dict[str, Any]
    tasks: dict[str, dict[str, Any]]
    runs: list[Run]
    slurm: dict[str, Any]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


def _part(key: str, value) -> str:
    """One axis in a run name: short key + value ('n500', 'a0.3'); a switch is its name when
    on and 'no' + its name when off ('lora', 'nolora')."""
    short = SHORT.get(key, key)
    if isinstance(value, bool):
        return short if value else f"no{short}"
    return short + _fmt(os.path.basename(str(value).rstrip("/")) if key == "model" else value)


def _fmt(v) -> str:
    return re.sub(r"[^A-Za-z0-9.+]", "_", str(v))


def _expand(value: str, base: str, is_file: bool = True) -> str:
    """${VAR} and ${VAR:-default} from the environment; relative paths against ``base``
    (a model value only where that names an existing path: else it is a name, 'smollm2')."""
    def sub(m):
        name, has_default, default = m.group(1).partition(":-")
        if name in os.environ:
            return os.environ[name]
        if has_default:
            return default
        raise GridError(f"environment variable {name} is not set (used in the grid file)")

    value = re.sub(r"\$\{([^}]+)\}", sub, value)
    if value and not os.path.isabs(value):
        joined = os.path.normpath(os.path.join(base, value))
        if is_file or os.path.exists(joined):
            return joined
    return value


FILE_KEYS = ("train_file", "eval_file", "rationale_file")


TASK_KEYS = ("prepare", "rationale_source", "rationale_sources")


def _task_settings(spec: dict) -> dict:
    """A task spec's own trainer arguments: everything but its files, rationale sources and
    prepare section."""
    return {k: v for k, v in spec.items() if k not in (*FILE_KEYS, *TASK_KEYS)}


def _trainer_fields() -> dict[str, type]:
    return {f.name: f for cls in ARG_CLASSES for f in fields(cls)}


def _check_args(where: str, args: dict) -> None:
    known = _trainer_fields()
    for key in args:
        if key not in known:
            raise GridError(f"{where}: {key!r} is not a trainer argument (see dhrd train --help)")
        if key in RESERVED:
            raise GridError(f"{where}: {key!r} is set by the harness per run; it cannot be a grid setting")


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise GridError(f"grid file not found: {path}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise GridError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid file holds a mapping")
    allowed = {"name", "model", "common", "presets", "seeds", "tasks", "blocks", "slurm", "description"}
    extra = set(raw) - allowed
    if extra:
        raise GridError(f"{path}: unknown key(s) {', '.join(sorted(extra))}; expected {', '.join(sorted(allowed))}")
    for key in ("model", "tasks", "blocks"):
        if key not in raw:
            raise GridError(f"{path}: missing {key!r}")
    return raw


def _read_tasks(path: str, raw_tasks, base: str) -> dict[str, dict]:
    from ..data.tasks import TASKS

    tasks: dict[str, dict] = {}
    for name, spec in (raw_tasks or {}).items():
        if name not in TASKS:
            raise GridError(f"{path}: tasks: unknown task {name!r} (known: {', '.join(TASKS)})")
        spec = dict(spec or {})
        for key in ("train_file", "eval_file"):
            if key not in spec:
                raise GridError(f"{path}: tasks.{name}: missing {key!r}")
        tasks[name] = {k: _expand(v, base) if k in PATH_KEYS and isinstance(v, str) else v for k, v in spec.items()}
        sources = spec.get("rationale_sources") or {}
        if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
            raise GridError(f"{path}: tasks.{name}.rationale_sources: a mapping of source name to rationale file")
        tasks[name]["rationale_sources"] = {k: _expand(v, base) for k, v in sources.items()}
        tasks[name]["rationale_source"] = str(spec.get("rationale_source", "palm"))
        _check_args(f"{path}: tasks.{name}", _task_settings(spec))
        if "prepare" in spec:
            prep = dict(spec["prepare"] or {})
            if isinstance(prep.get("source"), str):
                prep["source"] = _expand(prep["source"], base)
            if isinstance(prep.get("palm"), dict) and isinstance(prep["palm"].get("root"), str):
                prep["palm"] = {**prep["palm"], "root": _expand(prep["palm"]["root"], base)}
            tasks[name]["prepare"] = prep
    return tasks


def _block_runs(where: str, block, tasks: dict, seeds: list[int], base: str) -> list[Run]:
    """The runs of one block: its tasks x methods x seeds x the product of its axes."""
    if not isinstance(block, dict) or "methods" not in block:
        raise GridError(f"{where}: a block needs 'methods'")
    bad = set(block) - {"methods", "axes", "tasks", "seeds"}
    if bad:
        raise GridError(f"{where}: unknown key(s) {', '.join(sorted(bad))}")
    for m in block["methods"]:
        if m not in METHODS:
            raise GridError(f"{where}: unknown method {m!r} (one of {', '.join(METHODS)})")
    axes = dict(block.get("axes") or {})
    _check_args(where + ".axes", {k: v for k, v in axes.items() if k not in HARNESS_AXES})
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise GridError(f"{where}.axes.{k}: a non-empty list of values")
        if k in PATH_KEYS:
            axes[k] = [_expand(x, base, is_file=k != "model") if isinstance(x, str) else x for x in v]
    block_tasks = block.get("tasks", list(tasks))
    for t in block_tasks:
        if t not in tasks:
            raise GridError(f"{where}: task {t!r} is not in the grid's tasks")
    keys = sorted(axes)
    runs = []
    for task, method, seed in itertools.product(block_tasks, block["methods"], block.get("seeds", seeds)):
        files = tuple((k, v) for k, v in tasks[task].items() if k in FILE_KEYS)
        own = tuple(_task_settings(tasks[task]).items())
        for values in itertools.product(*(axes[k] for k in keys)):
            overrides, run_files = _rationale_source(where, task, tasks[task], dict(zip(keys, values)), files)
            runs.append(Run(task, method, seed, overrides, run_files, own))
    return runs


def _rationale_source(where: str, task: str, spec: dict, overrides: dict, files: tuple):
    """Resolve a ``rationales`` axis value to the task's rationale file. The task's default
    source is left out of the run's name, so its runs are the runs of a block without the
    axis (the same recipe, one run)."""
    source = overrides.get("rationales")
    if source is None:
        return tuple(overrides.items()), files
    if source == spec["rationale_source"]:
        del overrides["rationales"]
        return tuple(overrides.items()), files
    sources = spec["rationale_sources"]
    if source not in sources:
        known = ", ".join([spec["rationale_source"], *sources])
        raise GridError(f"{where}.axes.rationales: task {task!r} has no rationale source {source!r} (known: {known})")
    files = tuple((k, sources[source] if k == "rationale_file" else v) for k, v in files)
    if "rationale_file" not in dict(files):
        files += (("rationale_file", sources[source]),)
    return tuple(overrides.items()), files


def _read_presets(path: str, raw) -> dict[str, dict[str, Any]]:
    """``presets: {method: {field: value}}``: trainer arguments of one method's runs."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise GridError(f"{path}: presets: a mapping of method to a mapping of trainer arguments")
    for method, pins in raw.items():
        if method not in METHODS:
            raise GridError(f"{path}: presets: unknown method {method!r} (one of {', '.join(METHODS)})")
        _check_args(f"{path}: presets.{method}", pins)
    return {m: dict(v) for m, v in raw.items()}


def load_grid(path: str) -> Grid:
    base = os.path.dirname(os.path.abspath(path))
    raw = _read_yaml(path)
    common = dict(raw.get("common") or {})
    _check_args(f"{path}: common", common)
    for k in PATH_KEYS:
        if isinstance(common.get(k), str):
            common[k] = _expand(common[k], base, is_file=k != "model")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise GridError(f"{path}: seeds must be a non-empty list of integers")
    tasks = _read_tasks(path, raw["tasks"], base)
    presets = _read_presets(path, raw.get("presets"))
    blocks = raw["blocks"]
    if not isinstance(blocks, list) or not blocks:
        raise GridError(f"{path}: blocks must be a non-empty list")
    runs: dict[str, Run] = {}
    for i, block in enumerate(blocks):
        for run in _block_runs(f"{path}: blocks[{i}]", block, tasks, seeds, base):
            runs.setdefault(run.name, run)
    # seed by seed: the first seed of every comparison finishes first, so a grid that is
    # stopped part-way (or still running) already gives paired results
    ordered = sorted(runs.values(), key=lambda r: r.seed)
    return Grid(name=str(raw.get("name") or os.path.splitext(os.path.basename(path))[0]),
                model=_expand(str(raw["model"]), base, is_file=False), path=os.path.abspath(path), common=common,
                tasks=tasks, runs=ordered, slurm=dict(raw.get("slurm") or {}), presets=presets)
