"""The evaluation harness: image sources, the comparison of two Segmenters, the tolerance gates (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import run_python

from ulffn_deploy import harness
from ulffn_deploy.config import Normalization
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.harness import Comparison, Tolerance, check, compare, compare_many, passed, tolerance_for
from ulffn_deploy.imageio import write_mask, write_rgb
from ulffn_deploy.preprocess import Preprocessing
from ulffn_deploy.runtime.base import Segmenter
from ulffn_deploy.runtime.metadata import ArtifactMetadata
from ulffn_deploy.synth import generate_dataset

SIZE = 32


class Fake(Segmenter):
    """A numpy Segmenter: lesion probability = ``rule(batch)`` (N x H x W), so every statistic is known."""

    backend = "fake"

    def __init__(self, rule, size: int = SIZE, name: str = "fake") -> None:
        metadata = ArtifactMetadata(Normalization(), size, "paper", "fp32", None)
        super().__init__(Path(f"{name}.fake"), metadata)
        self.rule = rule

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        lesion = np.clip(self.rule(batch), 0, 1).astype(np.float32)
        return np.stack([1 - lesion, lesion], axis=1)


def brightness(batch: np.ndarray) -> np.ndarray:
    """A plausible lesion probability: dark pixels are lesion."""
    return 1 / (1 + np.exp(batch.mean(axis=1) * 4))


@pytest.fixture(scope="module")
def isic(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("isic")
    generate_dataset(folder, n_train=1, n_test=4, size=40, seed=0)
    return folder


# -- image sources --------------------------------------------------------------------------------------

def test_isic_folder_has_labels_and_limit_takes_the_first(isic):
    source = harness.find_images(isic, "test")
    assert len(source) == 4 and source.labelled and "with labels" in source.description
    assert source.ids == sorted(source.ids) and all(i.startswith("ISIC_") for i in source.ids)
    first = harness.find_images(isic, "test", limit=2)
    assert first.ids == source.ids[:2] and "first 2 of 4" in first.description
    image, label = first.items[0].load()
    assert image.dtype == np.uint8 and label.dtype == bool and label.shape == image.shape[:2]
    unlabelled = harness.find_images(isic, "test", labels=False)
    assert not unlabelled.labelled and unlabelled.items[0].load()[1] is None


def test_plain_folder_leaves_out_masks_and_superpixels(tmp_path):
    image = np.full((8, 8, 3), 100, np.uint8)
    write_rgb(tmp_path / "b.png", image)
    write_rgb(tmp_path / "a.jpg", image)
    write_mask(tmp_path / "ISIC_0000000_segmentation.png", np.ones((8, 8), bool))
    write_rgb(tmp_path / "ISIC_0000000_superpixels.png", image)
    (tmp_path / "notes.txt").write_text("not an image")
    source = harness.find_images(tmp_path)
    assert source.ids == ["a", "b"] and not source.labelled and "without labels" in source.description


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None])
def test_empty_or_missing_folder_is_an_error(tmp_path, make):
    folder = tmp_path / "data"
    make(folder)
    with pytest.raises(UlffnError, match="no images|no such data folder"):
        harness.find_images(folder)


def test_synthetic_images_are_labelled_and_reproducible():
    source = harness.synthetic_images(3, 48, seed=5)
    assert len(source) == 3 and source.labelled
    (a, mask_a), (b, _) = source.items[0].load(), source.items[1].load()
    assert a.shape[0] == 48 and mask_a.shape == a.shape[:2] and mask_a.any()
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, harness.synthetic_images(1, 48, seed=5).items[0].load()[0])
    assert harness.image_source(None, 2, 48).ids == ["synthetic_0000", "synthetic_0001"]


def test_batches_preprocess_and_latency_batch_repeats():
    source = harness.synthetic_images(3, 40)
    prep = Preprocessing(SIZE, "full", Normalization())
    batches = list(source.batches(2, prep))
    assert [len(b.items) for b in batches] == [2, 1]
    assert batches[0].input.shape == (2, 3, SIZE, SIZE) and batches[0].input.dtype == np.float32
    assert batches[0].placements[0].original_hw == batches[0].images[0].shape[:2]
    repeated = source.input_batch(5, prep)
    assert repeated.shape == (5, 3, SIZE, SIZE)
    np.testing.assert_array_equal(repeated[3], repeated[0])


# -- comparison -----------------------------------------------------------------------------------------

def test_identical_segmenters_agree_exactly():
    result = compare(Fake(brightness), Fake(brightness), harness.synthetic_images(3, 40), batch_size=2)
    assert result.images == 3 and result.max_abs_diff == 0 and result.p99_abs_diff == 0
    assert result.mask_dice == result.mask_dice_min == 1.0
    assert result.label_dice_drop == 0 and result.fit_mode == "full"


def test_error_statistics_are_those_of_the_lesion_probability():
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 0.02, size=(2, SIZE, SIZE)).astype(np.float32)
    noise[1, 0, 0] = 0.3  # one outlying pixel: the max, not the p99

    result = compare(Fake(lambda b: np.full(b.shape[:1] + b.shape[2:], 0.2)),
                     Fake(lambda b: 0.2 + noise[: len(b)]), harness.synthetic_images(2, 40), batch_size=2)
    errors = np.abs((0.2 + noise).astype(np.float32) - np.float32(0.2)).astype(np.float64)
    assert result.max_abs_diff == pytest.approx(errors.max(), abs=1e-7)
    assert result.mean_abs_diff == pytest.approx(errors.mean(), abs=1e-7)
    p99 = np.quantile(errors, 0.99, method="inverted_cdf")  # an error that 99 % of the pixels do not exceed
    assert p99 <= result.p99_abs_diff <= p99 + 1e-6
    assert result.p99_abs_diff < 0.03 < result.max_abs_diff
    assert result.mask_dice == 1.0  # both all background


def test_worst_images_by_mask_agreement_with_ids():
    def candidate(batch: np.ndarray) -> np.ndarray:
        p = brightness(batch)
        p[:, : SIZE // 2] = 1.0  # the top half turns lesion: images with little lesion agree worst
        return p

    source = harness.synthetic_images(4, 40)
    result = compare(Fake(brightness), Fake(candidate), source, batch_size=3, worst=2)
    dice = {row.id: row.mask_dice for row in result.per_image}
    assert [row.id for row in result.worst] == sorted(dice, key=dice.get)[:2]
    assert result.mask_dice_min == min(dice.values()) < result.mask_dice < 1


def test_label_metrics_at_the_original_size():
    source = harness.synthetic_images(2, 40)
    everything = compare(Fake(lambda b: np.ones(b.shape[:1] + b.shape[2:])), Fake(lambda b: np.zeros(b.shape[:1] + b.shape[2:])),
                         source)
    labels = [item.load()[1] for item in source.items]
    assert everything.metrics["reference"]["dice"] == pytest.approx(np.mean([2 * m.mean() / (m.mean() + 1) for m in labels]))
    assert everything.metrics["candidate"]["dice"] == 0.0
    assert everything.label_dice_drop == pytest.approx(everything.metrics["reference"]["dice"])
    assert everything.per_image[0].label_dice_candidate == 0.0


def test_unlabelled_images_give_no_label_metrics(tmp_path):
    write_rgb(tmp_path / "a.png", np.full((20, 30, 3), 90, np.uint8))
    result = compare(Fake(brightness), Fake(brightness), harness.find_images(tmp_path))
    assert result.metrics is None and result.label_dice_drop is None and result.per_image[0].label_dice_reference is None


def test_compare_many_runs_the_reference_once_and_matches_compare():
    calls = []

    def counted(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return brightness(batch)

    source = harness.synthetic_images(3, 40)
    darker = Fake(lambda b: brightness(b) * 0.9, name="darker")
    many = compare_many(Fake(counted), {"same": Fake(brightness), "darker": darker}, source, batch_size=2)
    assert calls == [2, 1]
    one = compare(Fake(brightness), darker, source, batch_size=2)
    assert many["darker"].to_dict() == one.to_dict()
    assert many["same"].max_abs_diff == 0 and many["darker"].candidate.startswith("fake fp32 (darker.fake)")


def test_different_inputs_cannot_be_compared():
    with pytest.raises(UlffnError, match="different inputs"):
        compare(Fake(brightness), Fake(brightness, size=64), harness.synthetic_images(1, 40))


# -- tolerances -----------------------------------------------------------------------------------------

def _result(mask_dice: float, p99: float, max_error: float = 0.5, drop: float | None = None) -> Comparison:
    metrics = None if drop is None else {"reference": {"dice": 0.9}, "candidate": {"dice": 0.9 - drop}}
    return Comparison("r", "c", "s", 1, "full", SIZE, max_error, p99 / 2, p99, mask_dice, mask_dice, mask_dice,
                      [], [], metrics)


def test_gates_at_their_boundaries_and_the_max_is_never_gated():
    fp16 = tolerance_for("fp16")
    assert passed(check(_result(fp16.min_mask_agreement, fp16.max_p99_abs_diff, max_error=1.0), fp16))
    assert not passed(check(_result(fp16.min_mask_agreement - 1e-4, 0.0), fp16))
    assert not passed(check(_result(1.0, fp16.max_p99_abs_diff * 1.01), fp16))
    assert len(check(_result(1.0, 0.0, drop=0.5), fp16)) == 2  # FP16: no label check


def test_int8_label_dice_drop_gate():
    int8 = tolerance_for("int8")
    limit = int8.max_label_dice_drop
    ok, dropped = check(_result(1.0, 0.0, drop=limit / 2), int8), check(_result(1.0, 0.0, drop=limit * 2), int8)
    assert passed(ok) and ok[2].value == pytest.approx(limit / 2)
    assert not passed(dropped) and [c.passed for c in dropped] == [True, True, False]
    assert "label Dice drop" in harness.failures(dropped)[0]
    unlabelled = check(_result(1.0, 0.0), int8)
    assert unlabelled[2].passed is None and passed(unlabelled)
    assert "not run (no labels)" in harness.format_checks(unlabelled)


def test_overrides_and_bad_tolerances():
    assert tolerance_for("int8", agreement=0.5).min_mask_agreement == 0.5
    assert tolerance_for("int8", agreement=0.5).max_label_dice_drop == tolerance_for("int8").max_label_dice_drop
    assert tolerance_for("fp32", label_dice_drop=0.02).max_label_dice_drop == 0.02
    with pytest.raises(UlffnError, match="unknown precision"):
        tolerance_for("fp8")
    with pytest.raises(UlffnError, match="not in"):
        Tolerance(1.5, 0.1)


def test_tables_name_the_worst_image_and_the_verdict():
    source = harness.synthetic_images(2, 40)
    result = compare(Fake(brightness), Fake(lambda b: 1 - brightness(b)), source)
    checks = check(result, tolerance_for("fp32"))
    table = harness.format_comparisons({"fp32": (result, checks)})
    assert "| fp32 | 2 |" in table and "FAIL: mask agreement" in table and result.worst[0].id in table
    assert f"worst: {result.worst[0].id}" in harness.format_agreement(result)


def test_harness_imports_no_heavy_package():
    run = run_python("import ulffn_deploy.harness, ulffn_deploy.verify")
    assert run.returncode == 0, run.stderr
    assert run.imported == []
