"""Parity of the engine with a plain PyTorch loop (the "Does it help?" issue).

1. Mechanics: several optimizer steps of the engine (packed rows, gradient accumulation,
   DeepSpeed ZeRO-2 AdamW, clipping, schedule) leave the same parameters as a plain loop
   that runs each example alone with full logits and torch AdamW.
2. Training outcome: the engine and tools/plain_loop.py (padded, no DeepSpeed) train the
   same tiny model on the same rows for the same number of examples; the engine's
   classifier must not fall more than a stated tolerance below the plain loop's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.distributed.train_helpers import REPO, child_env, write_model, write_task
from tests.helpers import load_tool

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("alpha,attn", [(1.0, "dhrd_segments"), (0.0, "dhrd_segments"), (1.0, "sdpa")])
def test_engine_steps_equal_a_plain_adamw_loop(alpha, attn):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "distributed", "_parity_worker.py"), str(alpha), attn],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    assert res["max_abs_update"] > 1e-3  # the steps really changed the weights
    # float32 rounding only: a dropped micro-batch, a wrong normalisation, clipping or
    # schedule would put the engine a sizeable fraction of an update away
    assert res["diff_over_update"] < 1e-2, res
    assert res["lrs"][0] > 0  # the first update is not spent at lr 0


@pytest.mark.slow
def test_plain_loop_runs_and_reproduces_the_engines_step_composition(tmp_path):
    plain_loop = load_tool("plain_loop")
    PlainArgs, step_batches, train_plain = plain_loop.PlainArgs, plain_loop.step_batches, plain_loop.train_plain

    from dhrd.data.order import MicroBatchStream

    paths, model = write_task(tmp_path / "data", n_train=40), write_model(tmp_path / "model")
    lengths = [30 + (i * 7) % 40 for i in range(40)]
    packed = step_batches(PlainArgs("rte", model, "t", "e", order="packed", pack_tokens=128, batch_size=8), lengths)
    stream = MicroBatchStream(lengths, 128, 1, 0)
    flat = [i for k in range(2 * len(stream.plan(0))) for row in stream[k] for i in row]
    assert set(i for b in packed for i in b) == set(range(40))  # the epoch (the last step may run into the next)
    assert [i for b in packed for i in b] == flat[:sum(map(len, packed))]
    rand = step_batches(PlainArgs("rte", model, "t", "e", batch_size=8, epochs=2.0), lengths)
    assert len(rand) == 10 and all(len(b) == 8 for b in rand)
    for method in ("pooled", "dhrd"):
        res = train_plain(PlainArgs("rte", model, paths["train"], paths["eval"], paths["rationales"], method=method,
                                    lr=1e-2, max_seq_len=128, out=str(tmp_path / method)))
        assert res["steps"] == 5 and len(res["predictions"]) == 16 and 0 <= res["metrics"]["accuracy"] <= 1
        lm = [x["lm"] for x in res["losses"]]
        assert (max(lm) == 0.0) if method == "pooled" else (lm[-1] < lm[0])
        assert os.path.exists(tmp_path / method / "plain_results.json")
