"""pad_ids: the one padding helper (CoT evaluation, the local teacher, the plain-loop tools)."""

import pytest
import torch

from dhrd.data.padding import pad_ids


def test_right_and_left_padding():
    ids, mask = pad_ids([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_ids([[1, 2, 3], [4]], pad_id=9, side="left")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_width_empty_rows_and_a_bad_side():
    ids, mask = pad_ids([[], [5]], pad_id=0, width=3)
    assert ids.tolist() == [[0, 0, 0], [5, 0, 0]] and mask.sum().item() == 1
    with pytest.raises(ValueError, match="side='middle'"):
        pad_ids([[1]], 0, side="middle")
