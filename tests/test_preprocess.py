import numpy as np
import pytest

from ulffn_deploy.config import Normalization
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.preprocess import (
    fit_image,
    fit_mask,
    placement_for,
    preprocess,
    probabilities_to_masks,
    softmax,
)


def test_paper_mode_resizes_shorter_side_then_centre_crops():
    p = placement_for(300, 400, 64, "paper")
    assert p.resized_hw == (64, 85) and p.crop_top_left == (0, 10)
    image = np.zeros((300, 400, 3), np.uint8)
    image[:, 200:] = 255
    fitted = fit_image(image, p)
    assert fitted.shape == (64, 64, 3)
    assert fitted[:, :20].max() == 0 and fitted[:, -20:].min() == 255


def test_full_mode_keeps_the_whole_field_of_view():
    p = placement_for(300, 400, 64, "full")
    assert p.resized_hw == (64, 64) and p.crop_top_left == (0, 0)


def test_normalised_nchw_float32():
    image = np.full((10, 20, 3), 255, np.uint8)
    batch, placements = preprocess([image, image], size=16, mode="full")
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == np.float32
    n = Normalization()
    assert batch[0, 0, 0, 0] == pytest.approx((1 - n.mean[0]) / n.std[0], rel=1e-5)
    assert len(placements) == 2


def test_masks_map_back_to_original_size_and_position():
    mask = np.zeros((120, 200), bool)
    mask[30:90, 50:150] = True
    for mode in ("full", "paper"):
        p = placement_for(120, 200, 64, mode)
        probs = np.zeros((1, 2, 64, 64), np.float32)
        probs[0, 1] = fit_mask(mask, p)
        probs[0, 0] = 1 - probs[0, 1]
        back = probabilities_to_masks(probs, [p])[0]
        assert back.shape == mask.shape
        agreement = 2 * (back & mask).sum() / (back.sum() + mask.sum())
        assert agreement > 0.97, mode


def test_paper_crop_maps_outside_to_background():
    p = placement_for(100, 300, 32, "paper")
    probs = np.zeros((1, 2, 32, 32), np.float32)
    probs[0, 1] = 1.0
    back = probabilities_to_masks(probs, [p])[0]
    assert back[:, :50].sum() == 0 and back[:, 150].all()


def test_bad_sizes_and_modes_are_errors():
    with pytest.raises(UlffnError, match="multiple of 8"):
        placement_for(10, 10, 30)
    with pytest.raises(UlffnError, match="fit mode"):
        placement_for(10, 10, 32, "stretch")


def test_softmax_sums_to_one():
    logits = np.random.default_rng(0).normal(size=(2, 2, 4, 4)).astype(np.float32) * 50
    probs = softmax(logits)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
