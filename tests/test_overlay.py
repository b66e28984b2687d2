"""Overlays (issue 12, "what a new user hit"): label contour, probability shading, caption, JPEG for large inputs."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from tiny_models import sample_images, tiny_onnx

from ulffn_deploy.cli import cli
from ulffn_deploy.data import FOLDERS
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.imageio import read_rgb
from ulffn_deploy.overlay import (
    LABEL_RGB,
    PREDICTED_RGB,
    PROBABILITY_RGB,
    OverlayStyle,
    draw_overlay,
    find_label,
    outline,
    overlay_path,
)

GRAY = 128


def _scene(size: int = 120):
    image = np.full((size, size, 3), GRAY, np.uint8)
    probability = np.zeros((size, size), np.float32)
    probability[20:80, 20:80] = 0.9
    label = np.zeros((size, size), bool)
    label[40:100, 40:100] = True
    return image, probability, label


def _colored(drawn: np.ndarray, rgb) -> np.ndarray:
    return np.all(drawn == np.asarray(rgb, np.uint8), axis=-1)


def test_label_and_prediction_contours_are_drawn_in_their_colours():
    image, probability, label = _scene()
    drawn = draw_overlay(image, probability, label)
    np.testing.assert_array_equal(_colored(drawn, PREDICTED_RGB), outline(probability > 0.5))
    assert _colored(drawn, LABEL_RGB).sum() > 0
    assert np.array_equal(_colored(drawn, LABEL_RGB), outline(label) & ~outline(probability > 0.5))
    assert not _colored(draw_overlay(image, probability), LABEL_RGB).any()


def test_probability_mode_shades_the_lesion_only():
    image, probability, _ = _scene()
    drawn = draw_overlay(image, probability, mode="probability").astype(int)
    inside, outside = drawn[50, 50], drawn[110, 110]
    assert list(outside) == [GRAY] * 3
    assert inside[0] > GRAY and inside[2] < GRAY  # toward PROBABILITY_RGB
    assert PROBABILITY_RGB[0] > PROBABILITY_RGB[2]


def test_caption_is_drawn_where_it_fits_and_left_out_where_it_does_not():
    image, probability, label = _scene(400)
    drawn = draw_overlay(image, probability, label, caption="model.fp32.onnx fp32")
    band = drawn[:10, :60]
    assert (band == 0).all(axis=-1).any() and (band > 200).all(axis=-1).any()  # white text on black
    assert (drawn[200:] == draw_overlay(image, probability, label)[200:]).all()
    tiny_image, tiny_probability, _ = _scene(16)
    assert np.array_equal(draw_overlay(tiny_image, tiny_probability, caption="model.fp32.onnx fp32"),
                          draw_overlay(tiny_image, tiny_probability))


def test_large_inputs_get_jpeg_overlays(tmp_path):
    assert overlay_path(tmp_path / "a_overlay", (1000, 1000, 3)).name == "a_overlay.png"
    assert overlay_path(tmp_path / "a_overlay", (2000, 2001)).name == "a_overlay.jpg"


def _isic_layout(root, nested: bool = False):
    images_name, truth_name = FOLDERS[(2016, "test")]
    images = root / images_name / images_name if nested else root / images_name
    truth = root / truth_name
    images.mkdir(parents=True)
    truth.mkdir()
    for i, image in enumerate(sample_images(2)):
        Image.fromarray(image).save(images / f"ISIC_{i:07d}.jpg")
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[image.shape[0] // 4 : 3 * image.shape[0] // 4, image.shape[1] // 4 : 3 * image.shape[1] // 4] = 255
        Image.fromarray(mask).save(truth / f"ISIC_{i:07d}_Segmentation.png")
    return images, truth


@pytest.mark.parametrize("nested", [False, True])
def test_isic_ground_truth_is_found_beside_isic_images(tmp_path, nested):
    images, truth = _isic_layout(tmp_path, nested)
    assert find_label(images / "ISIC_0000001.jpg") == truth / "ISIC_0000001_Segmentation.png"
    assert find_label(tmp_path / "elsewhere" / "ISIC_0000001.jpg") is None
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "lesion_mask.png").write_bytes(b"")
    assert find_label(tmp_path / "lesion.jpg", labels) == labels / "lesion_mask.png"


def test_predict_draws_labels_probability_and_reports_a_bad_label(tmp_path):
    images, truth = _isic_layout(tmp_path)
    (truth / "ISIC_0000001_Segmentation.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", str(tiny_onnx("fp32")), str(images), "-o", str(out), "--no-progress",
                                      "--overlay", "probability"])
    assert result.exit_code == 0, result.output
    first = read_rgb(out / "ISIC_0000000_overlay.png")
    assert _colored(first, LABEL_RGB).any()
    assert "label left out of the overlay" in result.output and "ISIC_0000001" in result.output
    assert not _colored(read_rgb(out / "ISIC_0000001_overlay.png"), LABEL_RGB).any()


def test_predict_writes_a_jpeg_overlay_for_a_large_image(tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.full((2000, 2100, 3), 180, np.uint8)).save(big)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", str(tiny_onnx("fp32")), str(big), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (out / "big_overlay.jpg").is_file() and not (out / "big_overlay.png").exists()
    with Image.open(out / "big_overlay.jpg") as written:
        assert written.format == "JPEG"


def test_a_missing_labels_folder_is_one_line(tmp_path):
    with pytest.raises(UlffnError, match="no such labels folder"):
        OverlayStyle(labels=tmp_path / "nope")
    with pytest.raises(UlffnError, match="unknown overlay"):
        OverlayStyle(mode="heatmap")
