"""Real two-process DeepSpeed ZeRO-3 run (CPU, ``deepspeed --num_gpus 2``) of the
dual-head loss on a tiny model whose LM head is tied to its (partitioned) embeddings:
every parameter's full gradient with the chunked loss equals the reference path's (and
the no-DeepSpeed oracle's), including on the rank that has zero supervised LM tokens,
which must neither hang the other rank nor lose its gradient contribution.

The worker (``_zero3_loss_worker.py``) explains how the loss sees the gathered weight."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.distributed.train_helpers import REPO, _free_port, child_env  # noqa: E402

pytestmark = pytest.mark.distributed

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_zero3_loss_worker.py")
PARAMS = {"embed.weight", "mix.weight", "mix.bias", "cls.weight", "cls.bias"}
TOL = 1e-5  # fp32; only the order of sums differs (chunks, reduce-scatter)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("loss_zero3")
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()), WORKER, str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=child_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    ranks = []
    for r in range(2):
        with open(out / f"rank{r}.json") as f:
            ranks.append(json.load(f))
    return ranks


def test_ranks_and_partitioning(results):
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    assert results[0]["n_lm_local"] > 14          # several chunks of 7 rows
    assert results[1]["n_lm_local"] == 0          # nothing to supervise on rank 1


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_full_gradients_equal_the_oracle(results, impl):
    for r in results:
        res = r["impls"][impl]
        assert res["grads_none"] == [], (r["rank"], res["grads_none"])
        assert set(res["max_abs_diff"]) == PARAMS
        for name, diff in res["max_abs_diff"].items():
            assert diff <= TOL * max(1.0, res["grad_norm"][name]), (r["rank"], impl, name, diff)
        assert res["grad_norm"]["embed.weight"] > 0   # the tied LM head's gradient landed


def test_chunked_equals_reference(results):
    for r in results:
        ref, chk = r["impls"]["reference"], r["impls"]["chunked"]
        assert abs(chk["loss"] - ref["loss"]) <= 1e-6 * max(1.0, abs(ref["loss"])), r["rank"]
        for name in PARAMS:
            a, b = chk["grad_norm"][name], ref["grad_norm"][name]
            assert abs(a - b) <= TOL * max(1.0, b), (r["rank"], name, a, b)
