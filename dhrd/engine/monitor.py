"""Training telemetry: TensorBoard scalars/text/hparams, a metrics.jsonl log, the live
progress (a tqdm bar on a terminal, a periodic plain line in a log: dhrd/progress.py).
Only rank 0 writes files or shows progress, so N ranks do not produce N copies. Messages
go through ``logging`` (dhrd/logs.py puts the rank prefix on them)."""

from __future__ import annotations

import json
import os
import time

from ..progress import Progress


class Monitor:
    """``scalars(step, {...})`` goes to TensorBoard and ``metrics.jsonl``; ``text`` and
    ``hparams`` to TensorBoard. A no-op on ranks other than 0."""

    def __init__(self, rank: int, output_dir: str, tb_dir: str | None = None, total_steps: int = 0,
                 initial_step: int = 0, progress: bool = True):
        self.rank = rank
        self.enabled = rank == 0
        self.writer = self.bar = self.jsonl = None
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(output_dir, exist_ok=True)
        self.writer = SummaryWriter(tb_dir or os.path.join(output_dir, "tensorboard"))
        self.jsonl = open(os.path.join(output_dir, "metrics.jsonl"), "a")
        if progress:  # a line reads "[rank0] train 120/252 (47.6%) | cls .. | lm .. | ex/s .. | ETA .."
            self.bar = Progress(total_steps, "train", unit="step", initial=initial_step, prefix="[rank0] ")

    def scalars(self, step: int, values: dict[str, float], *, kind: str = "train") -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        self.jsonl.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled:
            # TensorBoard renders text as markdown: keep whitespace and special tokens literal
            self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        if self.enabled:
            clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
            self.writer.add_hparams(clean, metrics, run_name="hparams")

    def advance(self, n: int = 1, **stats) -> None:
        """``n`` more optimizer steps done; ``stats`` (latest values) shown with the position."""
        if self.bar is not None:
            self.bar.update(n, **stats)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
