"""Dataclass arguments (model, data, loss, train), read from a JSON/YAML file and/or the
command line; the command line overrides the file. One parser (transformers'
HfArgumentParser) serves the CLI, train.py and the tests."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .alpha_schedule import AlphaSchedule

LmSections = Literal["all", "rationale", "rationale+answer"]
RationaleMode = Literal["teacher", "none", "shuffled"]
Consistency = Literal["keep", "drop", "drop_example"]
Method = Literal["dhrd", "dhrd_paper", "pooled", "label_only", "shuffled", "rationale_only"]

# --method presets: the fields each sets, in any argument class; an explicit flag (or a
# --config field) wins. ``dhrd`` is the recipe measured best here (docs/results.md,
# experiments/results: the linear head, where the paper's MLP head left DHRD below pooled;
# the LM term at alpha 0.3, where alpha 1 left it below pooled on one pass over the data);
# ``dhrd_paper`` is the paper's as published (its 2-layer MLP head, alpha constant), for the
# grids that measure the paper (experiments/gpu_paper.yaml).
_DUAL = {"alpha": 1.0, "beta": 1.0, "rationale_mode": "teacher"}
METHODS: dict[str, dict[str, Any]] = {
    "dhrd": {**_DUAL, "alpha": 0.3, "head": "linear"},  # cpu_gold 2000 x 1: +2.45 [+1.44, +3.58] over alpha 1
    "dhrd_paper": {**_DUAL, "head": "mlp", "alpha_schedule": "constant"},
    "pooled": {"alpha": 0.0, "beta": 1.0, "rationale_mode": "teacher"},  # alpha 0: sequences are x only
    "label_only": {**_DUAL, "rationale_mode": "none"},                  # [x, <ANS>, y]
    "shuffled": {**_DUAL, "rationale_mode": "shuffled"},                # rationales permuted among examples
    "rationale_only": {**_DUAL, "beta": 0.0},
}
assert tuple(METHODS) == get_args(Method)


def _literal_values(hint) -> tuple[tuple | None, bool]:
    """The values of a ``Literal[...]`` or ``Literal[...] | None`` hint, and whether None is allowed."""
    if get_origin(hint) is Literal:
        return get_args(hint), False
    literals = [a for a in get_args(hint) if get_origin(a) is Literal]
    return (get_args(literals[0]), True) if literals else (None, False)


def check_choices(args) -> None:
    """Every ``Literal`` field of the dataclass ``args`` holds one of its values: argparse
    checks the command line (HfArgumentParser makes them choices), but a --config file's
    values and a dataclass built in code are checked only here."""
    hints = get_type_hints(type(args))
    for f in fields(args):
        values, optional = _literal_values(hints[f.name])
        value = getattr(args, f.name)
        if values is not None and value not in values and not (optional and value is None):
            raise ValueError(f"{f.name}={value!r} is not one of {', '.join(map(str, values))}")


def split_gguf_model(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """``--model DIR/x.gguf`` (the file) means ``--model DIR --gguf_file x.gguf``, which is
    what transformers loads; a different --gguf_file beside it is a contradiction."""
    if not (model.endswith(".gguf") and os.path.isfile(model)):
        return model, gguf_file
    folder, name = os.path.split(model)
    if gguf_file not in (None, name):
        raise ValueError(f"--model {model} is a GGUF file and --gguf_file {gguf_file} names another: give "
                         "--model the file alone, or its folder with --gguf_file")
    return folder or ".", name


@dataclass
class ModelArgs:
    model: str = field(default="", metadata={"help": "HF model directory (or hub name when online)"})
    gguf_file: str | None = field(default=None, metadata={
        "help": "GGUF file inside --model (or give --model the .gguf file itself)"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={
        "help": "the backbone's weights (auto: as saved)"})
    attn_implementation: str = field(default="auto", metadata={
        "help": "auto (dhrd_segments; on CUDA where torch's varlen kernel is unusable, sdpa), dhrd_segments (packed "
                "rows: attention per segment, one varlen call on CUDA), flex_attention (a document block mask "
                "from the packed position ids), sdpa, eager, "
                "flash_attention_2"})
    pooling: Literal["last", "mean"] = field(default="last", metadata={
        "help": "the last token of the task input (the paper) or the mean over it"})
    head_inner_size: int | None = field(default=None, metadata={"help": "MLP width; default hidden size"})
    head_dropout: float = 0.0
    head: Literal["linear", "mlp"] = field(default="linear", metadata={
        "help": "linear (one bias-free projection; the default, measured best with DHRD; exports as a standard "
                "HF <Arch>ForSequenceClassification, dhrd export --format hf) or mlp (the paper's "
                "2-layer head; --method dhrd_paper)"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters + head instead of all weights"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"

    def __post_init__(self):
        check_choices(self)
        self.model, self.gguf_file = split_gguf_model(self.model, self.gguf_file)


@dataclass
class DataArgs:
    task: str = field(default="rte", metadata={"help": "task name (dhrd tasks lists them)"})
    train_file: str | None = field(default=None, metadata={"help": "JSONL path, or hub:<split> (online)"})
    eval_file: str | None = field(default=None, metadata={"help": "JSONL path, or hub:<split> (online)"})
    rationale_file: str | None = field(default=None, metadata={"help": "JSONL {id, rationale, teacher_label?}"})
    max_train_examples: int = field(default=0, metadata={
        "help": "train on the first N examples of --train_file (0 = all): a training-set-size axis"})
    lm_sections: LmSections = field(default="all", metadata={"help": "the tokens the LM loss covers"})
    rationale_mode: RationaleMode = field(default="teacher", metadata={
        "help": "teacher (DHRD), none (label-only: [x, <ANS>, y]), shuffled (ablation)"})
    rationales_per_example: int = field(default=0, metadata={
        "help": "with several rationales an example in --rationale_file ('rationales': [...]), use at most k "
                "(0 = all): each epoch trains on a different one, at the compute of one"})
    rationale_fraction: float = field(default=1.0, metadata={
        "help": "keep the first p of each rationale's tokens (Distilling the Essence)"})
    label_consistency: Consistency = field(default="keep", metadata={
        "help": "where teacher_label disagrees with the gold label: keep, drop (the rationale), drop_example"})
    max_seq_len: int = field(default=1024, metadata={"help": "longest training sequence [x,<REASON>,r,<ANS>,y]"})
    max_input_len: int | None = field(default=None, metadata={"help": "longest x; default max_seq_len - 32"})
    pack_tokens: int = field(default=4096, metadata={"help": "token budget of one packed row"})
    rows_per_batch: int = field(default=1, metadata={"help": "packed rows per micro-batch"})
    cache_dir: str | None = field(default=None, metadata={"help": "tokenised-data cache; default <output_dir>/cache"})
    formulation: Literal["classify", "choice"] = field(default="classify", metadata={
        "help": "classify (one pooled input, a head over the labels) or choice (multiple-choice tasks: each "
                "option scored alone, softmax over a question's options; docs/multiple_choice.md)"})

    def __post_init__(self):
        check_choices(self)
        if not 0.0 <= self.rationale_fraction <= 1.0:
            raise ValueError(f"rationale_fraction={self.rationale_fraction} must be in [0, 1]")
        if self.rationales_per_example < 0:
            raise ValueError(f"rationales_per_example={self.rationales_per_example} must be >= 0")
        if self.max_train_examples < 0:
            raise ValueError(f"max_train_examples={self.max_train_examples} must be >= 0")
        if self.pack_tokens < self.max_seq_len:
            raise ValueError(f"pack_tokens={self.pack_tokens} must be >= max_seq_len={self.max_seq_len}")
        if self.max_input_len is None:
            self.max_input_len = max(8, self.max_seq_len - 32)
        if self.max_input_len > self.max_seq_len:
            raise ValueError(f"max_input_len={self.max_input_len} exceeds max_seq_len={self.max_seq_len}")


@dataclass
class LossArgs:
    alpha: float = field(default=1.0, metadata={"help": "weight of the LM (reasoning) term; 0 = pooled baseline"})
    beta: float = field(default=1.0, metadata={"help": "weight of the classification term"})
    loss_impl: Literal["auto", "reference", "chunked", "triton"] = field(default="auto", metadata={
        "help": "the LM term's implementation (docs/performance.md); auto: triton on CUDA, else chunked"})
    alpha_schedule: AlphaSchedule = field(default="constant", metadata={
        "help": "alpha over training: constant (the paper), linear or cosine (decay to alpha_floor), step "
                "(alpha, then alpha_floor after alpha_switch_fraction of the steps), ramp (alpha_floor rising to "
                "alpha at alpha_switch_fraction: the classifier first; dhrd/alpha_schedule.py)"})
    alpha_floor: float = field(default=0.0, metadata={"help": "alpha at the end of a decaying schedule"})
    alpha_switch_fraction: float = field(default=0.5, metadata={
        "help": "the fraction of the steps where the step schedule switches or the ramp ends"})
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    method: Method | None = field(default=None, metadata={
        "help": "a preset of the method's settings (config.METHODS, docs/method.md); explicit flags override"})

    def __post_init__(self):
        check_choices(self)
        if self.alpha < 0 or self.beta < 0 or self.alpha == self.beta == 0:
            raise ValueError(f"alpha={self.alpha}, beta={self.beta}: both >= 0 and not both 0")
        if not 0.0 <= self.alpha_floor <= max(self.alpha, 0.0) and self.alpha_schedule != "constant":
            raise ValueError(f"alpha_floor={self.alpha_floor} must be in [0, alpha={self.alpha}]")
        if not 0.0 <= self.alpha_switch_fraction <= 1.0:
            raise ValueError(f"alpha_switch_fraction={self.alpha_switch_fraction} must be in [0, 1]")


@dataclass
class TrainArgs:
    output_dir: str = "outputs/run"
    seed: int = 42
    epochs: float = 3.0
    max_steps: int = -1
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 5
    autocast: Literal["none", "bf16"] = field(default="none", metadata={
        "help": "bf16: mixed precision through DeepSpeed's torch_autocast (fp32 weights and optimizer, "
                "bf16 matmuls; faster on a CPU with AVX512-BF16 or AMX: docs/performance.md); "
                "none: the weights' dtype"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile each decoder block (fuses norms, rotary, activations; attention stays eager); "
                "the first steps pay the compile; not with ZeRO-3"})
    lr_schedule: Literal["auto", "cosine", "linear", "constant"] = field(default="auto", metadata={
        "help": "after the linear warm-up: cosine, linear (transformers' default decay) or constant; "
                "auto: the --ds_config's scheduler, cosine for the built-in config"})
    global_batch_size: int = 32
    eval_every: int = 0
    save_every: int = 0
    eval_mode: Literal["auto", "classifier", "cot", "both"] = field(default="auto", metadata={
        "help": "classifier (the pooled head), cot (the LM head decodes a rationale, then answers), both; "
                "auto: cot when beta is 0 (rationale-only: no classifier), else classifier"})
    cot_max_new_tokens: int = field(default=256, metadata={"help": "rationale budget of CoT evaluation"})
    cot_batch_size: int = field(default=16, metadata={"help": "examples per CoT generate call"})
    keep_checkpoints: int = 2
    resume: str = field(default="none", metadata={"help": "none, auto, or a checkpoint directory"})
    ds_config: str | None = field(default=None, metadata={
        "help": "DeepSpeed JSON; default: built in, ZeRO stage auto (0 for one fp32 process, 1 for one "
                "bf16/fp16 process, else 2)"})
    log_every: int = 1
    micro_batches_per_step: int = field(default=0, metadata={
        "help": "GLOBAL micro-batches (all ranks) per optimizer step; 0 = from global_batch_size and the "
                "mean examples per packed micro-batch. Same value => same step on any world size"})
    batching: Literal["auto", "exact", "packed"] = field(default="auto", metadata={
        "help": "exact: every optimizer step is global_batch_size examples (random, packed within the step); "
                "packed: micro_batches_per_step full packs a step (the tightest packing; the example count "
                "per step varies); auto: packed when --micro_batches_per_step is given, else exact"})
    max_grad_norm: float = 1.0
    nan_patience: int = field(default=3, metadata={"help": "stop after this many non-finite steps in a row"})
    log_sequences: int = field(default=3, metadata={"help": "training sequences rendered into TensorBoard"})
    tensorboard_dir: str | None = field(default=None, metadata={"help": "default <output_dir>/tensorboard"})
    peak_tflops: float = field(default=0.0, metadata={
        "help": "the device's peak TFLOP/s for perf/mfu; 0 = datasheet bf16 peak of a known GPU (none on CPU)"})
    progress: bool = field(default=True, metadata={
        "help": "progress on rank 0: a bar on a terminal, a line every DHRD_PROGRESS_EVERY s (30) in a log"})
    export_final: bool = field(default=True, metadata={"help": "write consolidated weights to <output_dir>/final"})

    def __post_init__(self):
        check_choices(self)
        if not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs} must be > 0")
        for name in ("lr", "weight_decay", "warmup_steps", "max_grad_norm", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.cot_max_new_tokens < 1 or self.cot_batch_size < 1:
            raise ValueError("cot_max_new_tokens and cot_batch_size must be >= 1")
        if self.global_batch_size < 1:
            raise ValueError(f"global_batch_size={self.global_batch_size} must be >= 1")
        if self.micro_batches_per_step < 0:
            raise ValueError(f"micro_batches_per_step={self.micro_batches_per_step} must be >= 0")
        if self.nan_patience < 1:
            raise ValueError(f"nan_patience={self.nan_patience} must be >= 1")


ARG_CLASSES = (ModelArgs, DataArgs, LossArgs, TrainArgs)


def _read_config_file(path: str) -> dict[str, Any]:
    """A flat mapping, or one with sections ``model:``, ``data:``, ``loss:``, ``train:``."""
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else path
            raise ValueError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(raw).__name__}")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("model", "data", "loss", "train") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    known = {f.name for cls in ARG_CLASSES for f in fields(cls)}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}")
    return flat


def build_parser():
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message):  # one line through the callers' user-error path, not usage + exit
            raise ValueError(message)

    parser = Parser(ARG_CLASSES)
    parser.add_argument("--config", default=None, help="JSON or YAML file of arguments; CLI overrides it")
    return parser


def parse_args(argv: list[str] | None = None):
    """Returns (ModelArgs, DataArgs, LossArgs, TrainArgs) and the list of unknown args
    (e.g. DeepSpeed's --local_rank), which the caller decides about."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**_read_config_file(pre.config))
    *args, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    # parse_args_into_dataclasses also returns the --config namespace; keep the dataclasses
    dcs = [a for a in args if isinstance(a, ARG_CLASSES)]
    return (*dcs, rest)


def explicit_fields(argv: list[str] | None) -> set[str]:
    """Field names set on the command line or in the --config file: what a --method
    preset must not override."""
    argv = list(argv or [])
    names = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            names |= set(_read_config_file(argv[i + 1]))
        elif a.startswith("--config="):
            names |= set(_read_config_file(a.split("=", 1)[1]))
    return names


def apply_method(loss_args: "LossArgs", data_args: "DataArgs", explicit: set[str],
                 model_args: "ModelArgs | None" = None) -> None:
    """Set the fields of the ``loss_args.method`` preset (METHODS) that were not given
    explicitly, then check the results again. Without ``model_args`` the preset's model
    fields (its head) are left alone: callers that build no model."""
    if loss_args.method is None:
        return
    targets = [a for a in (model_args, data_args, loss_args) if a is not None]
    for key, value in METHODS[loss_args.method].items():
        owner = next((a for a in targets if key in {f.name for f in fields(a)}), None)
        if owner is not None and key not in explicit:
            setattr(owner, key, value)
    for a in targets:
        type(a).__post_init__(a)


def resolved_config(*arg_objs) -> dict[str, dict[str, Any]]:
    names = {ModelArgs: "model", DataArgs: "data", LossArgs: "loss", TrainArgs: "train"}
    return {names[type(a)]: asdict(a) for a in arg_objs}

