import pytest

from dhrd.data.metrics import accuracy, binary_f1, exact_match_by_group, macro_f1


def test_accuracy():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75


def test_macro_f1_hand_worked_confusion():
    # gold 0 0 0 1 1 2 / pred 0 0 1 1 2 2:
    # class 0: 2 TP of 2 predicted, 3 gold -> 2*2/(2+3) = 0.8
    # class 1: 1 TP of 2 predicted, 2 gold -> 2*1/(2+2) = 0.5
    # class 2: 1 TP of 2 predicted, 1 gold -> 2*1/(2+1) = 2/3
    f1 = macro_f1([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2], 3)
    assert f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_macro_f1_counts_absent_classes_as_zero():
    """sklearn's zero_division=0 over labels=range(n): classes 1 and 2 never occur and score 0."""
    assert macro_f1([0, 0], [0, 0], 3) == pytest.approx(1 / 3)
    assert macro_f1([1, 1], [0, 0], 2) == 0.0


def test_macro_f1_rejects_out_of_range_class():
    with pytest.raises(ValueError, match="outside 0..2"):
        macro_f1([0, 3], [0, 1], 3)


def test_binary_f1():
    # 2 TP, 1 FP, 1 FN -> 2*2 / (3 + 3)
    assert binary_f1([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(4 / 6)
    assert binary_f1([0, 0], [0, 0]) == 0.0  # no positive anywhere
    assert binary_f1([0, 1], [0, 1], positive=0) == 1.0


def test_exact_match_counts_each_group_once():
    groups = ["q1", "q1", "q1", "q2", "q2", "q3"]
    preds = [1, 0, 1, 0, 0, 1]
    gold = [1, 0, 1, 1, 0, 1]
    assert exact_match_by_group(preds, gold, groups) == pytest.approx(2 / 3)


@pytest.mark.parametrize("fn", [accuracy, binary_f1, lambda p, y: macro_f1(p, y, 2),
                                lambda p, y: exact_match_by_group(p, y, [])])
def test_empty_input_raises(fn):
    with pytest.raises(ValueError, match="empty"):
        fn([], [])


@pytest.mark.parametrize("fn", [accuracy, binary_f1, lambda p, y: macro_f1(p, y, 2),
                                lambda p, y: exact_match_by_group(p, y, ["a", "b"])])
def test_length_mismatch_raises(fn):
    with pytest.raises(ValueError, match="differ in length"):
        fn([0, 1], [0])


def test_groups_length_mismatch_raises():
    with pytest.raises(ValueError, match="groups and preds differ"):
        exact_match_by_group([0, 1], [0, 1], ["a"])
