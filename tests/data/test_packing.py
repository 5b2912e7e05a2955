"""Best-fit-decreasing packing and the PackedBatch collator."""

import json
import random

import pytest
import torch

from dhrd.config import DataArgs
from dhrd.data.packing import IGNORE, best_fit_decreasing, collate_packed, packing_efficiency, plan_micro_batches
from dhrd.data.pipeline import build_training_set
from dhrd.data.tasks import get_task
from dhrd.model.dual_head import add_reasoning_tokens
from tests.helpers import make_tiny_tokenizer, tiny_backbone


def test_bfd_places_every_item_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 256)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 256 for b in bins)
    assert len(bins) == -(-sum(lengths) // 256) or len(bins) <= -(-sum(lengths) // 256) + 1


def test_bfd_rejects_too_long_items():
    with pytest.raises(ValueError, match="longer than the packing budget 10"):
        best_fit_decreasing([3, 11], 10)


def test_plan_is_deterministic_and_complete():
    lengths = [random.Random(1).randint(5, 60) for _ in range(300)]
    a = plan_micro_batches(lengths, 128, rows_per_batch=2, seed=1, epoch=0, window=100)
    assert a == plan_micro_batches(lengths, 128, rows_per_batch=2, seed=1, epoch=0, window=100)
    assert a != plan_micro_batches(lengths, 128, rows_per_batch=2, seed=1, epoch=1, window=100)
    assert sorted(i for mb in a for row in mb for i in row) == list(range(300))


def test_collator_contract():
    segs = [{"input_ids": [5, 6, 7, 8], "lm_mask": [0, 0, 1, 1], "cls_pos": 1, "label": 1, "id": "a"},
            {"input_ids": [9, 10, 11], "lm_mask": [0, 1, 1], "cls_pos": 0, "label": 0, "id": "b"},
            {"input_ids": [12, 13], "lm_mask": [0, 0], "cls_pos": 1, "label": 2, "id": "c"}]
    b = collate_packed([segs[:2], segs[2:]], pad_id=0, pad_to_multiple_of=8)
    assert b.input_ids.shape == (2, 8)
    assert b.input_ids[0].tolist() == [5, 6, 7, 8, 9, 10, 11, 0]
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
    assert b.position_ids[1].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]  # padding: its own segment
    # token i's target is token i+1 when that one is supervised; never across segments
    assert b.lm_targets[0].tolist() == [IGNORE, 7, 8, IGNORE, 10, 11, IGNORE, IGNORE]
    assert (b.lm_targets[1] == IGNORE).all()
    assert b.cls_index.tolist() == [1, 4, 8 + 1] and b.cls_start.tolist() == [0, 4, 8]
    assert b.cls_labels.tolist() == [1, 0, 2] and b.example_ids == ["a", "b", "c"]
    assert b.n_real_tokens == 9 and b.n_lm_tokens == 4
    assert b.to("cpu").input_ids.dtype == torch.long


WORDS = ("the a premise hypothesis passage question because so therefore true false yes no "
         "river city team law court study found report").split()


def sentence(rng, mean_words):
    n = max(3, int(rng.lognormvariate(0, 0.45) * mean_words))
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def fixture_file(path, task, n, seed=0):
    """Rows shaped like the real files, with the real files' rough word counts
    (RTE: premise ~45 words, hypothesis ~9; BoolQ: passage ~110, question ~9)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            if task == "rte":
                row = {"premise": sentence(rng, 45), "hypothesis": sentence(rng, 9),
                       "label": rng.choice(["entailment", "not_entailment"]), "idx": i}
            else:
                row = {"question": sentence(rng, 9).lower().rstrip("."), "passage": sentence(rng, 110),
                       "label": rng.random() < 0.6, "idx": i}
            f.write(json.dumps(row) + "\n")
    rats = path.with_suffix(".rationales.jsonl")
    with open(rats, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": str(i), "rationale": sentence(rng, 60)}) + "\n")
    return path, rats


@pytest.mark.parametrize("task_name", ["rte", "boolq"])
def test_packing_efficiency_on_task_length_distributions(tmp_path, task_name):
    task = get_task(task_name)
    data, rats = fixture_file(tmp_path / f"{task_name}.jsonl", task_name, 1500)
    tok = make_tiny_tokenizer()
    special = add_reasoning_tokens(tok, tiny_backbone("llama"))
    args = DataArgs(task=task_name, rationale_file=str(rats), max_seq_len=1024, pack_tokens=8192)
    ds, report = build_training_set(task, task.read(data), tok, special, args)
    lengths = ds["length"]
    assert report["examples_with_rationale"] == 1500 and min(lengths) > 50
    bins = best_fit_decreasing(lengths, args.pack_tokens)
    eff = packing_efficiency(lengths, bins, args.pack_tokens)
    print(f"{task_name}: {len(lengths)} sequences, mean {sum(lengths) / len(lengths):.0f} tokens, "
          f"{len(bins)} rows of {args.pack_tokens}: efficiency {eff:.4f}")
    assert eff >= 0.98


def test_exact_steps_hold_exactly_the_batch_and_every_example_once():
    import random

    from dhrd.data.packing import plan_exact_steps

    lengths = [random.Random(i).randint(5, 60) for i in range(103)]
    steps = plan_exact_steps(lengths, 8, 64, rows_per_batch=2, seed=3, epoch=1)
    sizes = [sum(len(row) for mb in st for row in mb) for st in steps]
    assert sizes == [8] * 12 + [7]  # 103 = 12 x 8 + 7
    seen = [i for st in steps for mb in st for row in mb for i in row]
    assert sorted(seen) == list(range(103))
    assert all(sum(lengths[i] for i in row) <= 64 for st in steps for mb in st for row in mb)
    assert all(1 <= len(mb) <= 2 for st in steps for mb in st)
    assert plan_exact_steps(lengths, 8, 64, rows_per_batch=2, seed=3, epoch=1) == steps
    assert plan_exact_steps(lengths, 8, 64, rows_per_batch=2, seed=3, epoch=2) != steps
