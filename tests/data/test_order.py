"""The data order: with k rationales an example, each epoch trains every example once, on a
different one of its rows each epoch, and steps count examples, not rows."""

import random
from types import SimpleNamespace

import pytest

from dhrd.data.order import MicroBatchStream, data_order, example_rows


def _rows_seen(stream, epoch):
    return [r for mb in stream.plan(epoch) for row in mb for r in row]


@pytest.mark.parametrize("batch_size", [None, 4])
def test_k_rows_an_example_one_a_epoch_rotating(batch_size):
    n = 10
    ks = [1 + j % 3 for j in range(n)]  # 1, 2 or 3 rationales
    slots = list(range(n)) + [j for j in range(n) for _ in range(ks[j] - 1)]
    lengths = [random.Random(r).randint(5, 40) for r in range(len(slots))]
    stream = MicroBatchStream(lengths, 64, 1, seed=0, batch_size=batch_size, per_step=8, slots=slots)
    assert stream.n_examples == n
    used = {}
    for epoch in range(3):
        rows = _rows_seen(stream, epoch)
        assert sorted(slots[r] for r in rows) == list(range(n))  # every example exactly once
        for r in rows:
            used.setdefault(slots[r], set()).add(r)
        assert all(sum(lengths[r] for r in row) <= 64 for mb in stream.plan(epoch) for row in mb)
    # over k epochs an example with k rows has trained on each of them
    assert all(len(used[j]) == ks[j] for j in range(n))
    again = MicroBatchStream(lengths, 64, 1, seed=0, batch_size=batch_size, per_step=8, slots=slots)
    assert again.plan(1) == stream.plan(1)  # deterministic: resume needs only the step


def test_steps_count_examples_not_rows():
    slots = list(range(16)) + list(range(16)) + list(range(16))  # k = 3 everywhere
    lengths = [20] * len(slots)
    args = SimpleNamespace(batching="auto", micro_batches_per_step=0, global_batch_size=8, max_steps=-1, epochs=2,
                           seed=0)
    data = SimpleNamespace(pack_tokens=64, rows_per_batch=1)
    _, _, total, _ = data_order(args, data, lengths, 1, slots=slots)
    _, _, total_k1, _ = data_order(args, data, lengths[:16], 1)
    assert total == total_k1 == 4  # 16 examples x 2 epochs / 8


def test_example_rows_refuses_a_row_before_its_example():
    assert example_rows([0, 1, 0, 1, 1], 5) == [[0, 2], [1, 3, 4]]
    assert example_rows(None, 3) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="example 2"):
        example_rows([0, 2, 1], 3)
