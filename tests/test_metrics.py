import numpy as np
import pytest

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.metrics import METRICS, confusion, dice_agreement, format_table, image_metrics, mean_metrics


def masks(pred_bits: str, true_bits: str) -> tuple[np.ndarray, np.ndarray]:
    return np.array([c == "1" for c in pred_bits]), np.array([c == "1" for c in true_bits])


def test_confusion_counts_lesion_as_positive():
    pred, truth = masks("1100", "1010")
    assert confusion(pred, truth) == (1, 1, 1, 1)


def test_metrics_match_isic_definitions():
    pred, truth = masks("11110000", "11000001")  # TP 2, FP 2, FN 1, TN 3
    m = image_metrics(pred, truth)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 5)
    assert m["jaccard"] == pytest.approx(2 / 5)
    assert m["dice"] == pytest.approx(4 / 7)
    assert m["thresholded_jaccard"] == 0.0  # 0.4 < 0.65


def test_thresholded_jaccard_keeps_values_at_or_above_065():
    pred, truth = masks("1111111111111", "1111111111110")  # J = 12/13
    assert image_metrics(pred, truth)["thresholded_jaccard"] == pytest.approx(12 / 13)


def test_empty_cases_score_one_where_denominator_is_zero():
    empty = np.zeros(9, bool)
    m = image_metrics(empty, empty)
    assert m["jaccard"] == m["dice"] == m["sensitivity"] == m["thresholded_jaccard"] == 1.0
    assert m["specificity"] == m["accuracy"] == 1.0
    full = np.ones(9, bool)
    m = image_metrics(full, full)
    assert m["specificity"] == 1.0 and m["dice"] == 1.0
    m = image_metrics(full, empty)  # everything false positive
    assert m["dice"] == 0.0 and m["specificity"] == 0.0 and m["sensitivity"] == 1.0


def test_mean_is_over_images_not_pixels():
    a = image_metrics(*masks("1" * 100, "1" * 100))
    b = image_metrics(*masks("10", "01"))
    assert mean_metrics([a, b])["dice"] == pytest.approx(0.5)
    with pytest.raises(UlffnError):
        mean_metrics([])


def test_shape_mismatch_is_an_error():
    with pytest.raises(UlffnError, match="shape"):
        confusion(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_dice_agreement_and_table():
    a, b = masks("1100", "1100")
    assert dice_agreement(a, b) == 1.0
    table = format_table({"model": dict.fromkeys(METRICS, 0.5)})
    assert table.splitlines()[0].startswith("| | Accuracy | Dice | JSI")
    assert "| model | 0.5000 |" in table
