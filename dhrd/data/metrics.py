"""Classification metrics in plain numpy, so scoring needs neither torch nor sklearn.

Every function takes class indices (ints), refuses empty input (a score of nothing is a
bug upstream, not 0 or NaN) and refuses inputs of different lengths."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def _arrays(preds: Sequence[int], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(preds), np.asarray(labels)
    if p.ndim != 1 or y.ndim != 1:
        raise ValueError("preds and labels must be flat sequences of class indices")
    if len(p) != len(y):
        raise ValueError(f"preds and labels differ in length ({len(p)} vs {len(y)})")
    if len(p) == 0:
        raise ValueError("nothing to score: preds and labels are empty")
    return p, y


def _f1(pred_pos: np.ndarray, gold_pos: np.ndarray) -> float:
    """F1 = 2TP / (2TP + FP + FN) = 2TP / (#predicted + #gold); 0 when both are 0."""
    denom = int(pred_pos.sum() + gold_pos.sum())
    return 2.0 * int((pred_pos & gold_pos).sum()) / denom if denom else 0.0


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    p, y = _arrays(preds, labels)
    return float(np.mean(p == y))


def macro_f1(preds: Sequence[int], labels: Sequence[int], n_classes: int) -> float:
    """Unweighted mean of the per-class F1 over classes 0..n_classes-1.

    Same as sklearn's ``f1_score(average='macro', labels=range(n_classes), zero_division=0)``:
    a class that is neither gold nor predicted anywhere scores F1 0 and still counts in the
    mean, so the score of a small sample does not depend on which classes it happens to hold
    (CB has only 16 neutral examples in 250)."""
    p, y = _arrays(preds, labels)
    for name, a in (("preds", p), ("labels", y)):
        if a.min() < 0 or a.max() >= n_classes:
            raise ValueError(f"{name} hold a class index outside 0..{n_classes - 1}")
    return float(np.mean([_f1(p == c, y == c) for c in range(n_classes)]))


def binary_f1(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the ``positive`` class (MultiRC's F1a over all answer options); 0 when the
    positive class is neither predicted nor gold."""
    p, y = _arrays(preds, labels)
    return _f1(p == positive, y == positive)


def exact_match_by_group(preds: Sequence[int], labels: Sequence[int], groups: Sequence[Hashable]) -> float:
    """Fraction of groups whose members are all correct (MultiRC EM: a question counts only
    if every one of its answer options is classified right). Each group counts once,
    whatever its size."""
    p, y = _arrays(preds, labels)
    if len(groups) != len(p):
        raise ValueError(f"groups and preds differ in length ({len(groups)} vs {len(p)})")
    all_right: dict[Hashable, bool] = {}
    for g, ok in zip(groups, (p == y).tolist()):
        all_right[g] = all_right.get(g, True) and ok
    return sum(all_right.values()) / len(all_right)
