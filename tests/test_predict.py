"""predict: masks, overlays and the CSV for files and folders, odd inputs, failures and the default model."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import run_cli
from PIL import Image
from tiny_models import sample_images, tiny_onnx

from ulffn_deploy.cli import cli
from ulffn_deploy.imageio import read_mask, read_rgb
from ulffn_deploy.overlay import draw_overlay, outline
from ulffn_deploy.predict import collect_images, predict_paths
from ulffn_deploy.runtime import Segmenter


def _odd_inputs(folder):
    """Every kind of file predict meets, good and bad; returns {output key: (file, expected (height, width) or None)}."""
    rgb = sample_images(4)
    folder.mkdir()
    Image.fromarray(rgb[0]).save(folder / "plain.jpg", quality=95)
    Image.fromarray(rgb[1][..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb[2], np.full(rgb[2].shape[:2], 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb[3][..., 1].astype(np.uint16) * 257).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display, so height and width swap
    Image.fromarray(rgb[0]).save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(np.full((5, 7, 3), 200, np.uint8)).save(folder / "tiny.png")
    (folder / "nested").mkdir()
    Image.fromarray(rgb[1]).save(folder / "nested" / "deeper.bmp")
    good = (folder / "plain.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.png").write_text("not an image at all")
    (folder / "README.txt").write_text("ignored: not an image suffix")
    h0, w0 = rgb[0].shape[:2]
    sizes = {"plain.jpg": (h0, w0), "gray.png": rgb[1].shape[:2], "rgba.png": rgb[2].shape[:2],
             "deep16.png": rgb[3].shape[:2], "rotated.jpg": (w0, h0), "tiny.png": (5, 7),
             "nested/deeper.bmp": rgb[1].shape[:2], "truncated.jpg": None, "notes.png": None}
    return {name.rsplit(".", 1)[0]: (folder / name, size) for name, size in sizes.items()}


def _rows(path):
    with open(path, newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def test_predict_folder_with_odd_inputs(tmp_path):
    expected = _odd_inputs(tmp_path / "in")
    out = tmp_path / "out"
    reported = []
    summary = predict_paths(tiny_onnx("fp32"), [tmp_path / "in"], out, batch_size=3, progress=False,
                            report=reported.append)
    good = {key: (path, size) for key, (path, size) in expected.items() if size}
    assert len(summary.predicted) == len(good)
    assert sorted(p.name for p, _ in summary.failed) == ["notes.png", "truncated.jpg"]
    assert len(reported) == 2 and all(line.startswith("skipped ") and "\n" not in line for line in reported)
    rows = _rows(out / "predictions.csv")
    assert len(rows) == len(good)
    for key, (path, (height, width)) in good.items():
        mask = read_mask(out / f"{key}_mask.png")
        assert mask.shape == (height, width)
        assert np.unique(np.asarray(Image.open(out / f"{key}_mask.png"))).tolist() in ([0], [255], [0, 255])
        assert read_rgb(out / f"{key}_overlay.png").shape == (height, width, 3)
        row = rows[str(path)]
        assert (int(row["height"]), int(row["width"])) == (height, width)
        assert int(row["lesion_pixels"]) == int(mask.sum())
        assert float(row["lesion_fraction"]) == pytest.approx(mask.mean(), abs=1e-6)
    assert "predicted 7 image(s), 2 failed with model.fp32.onnx (onnxruntime, fp32, fit full)" in summary.line()


def test_csv_probability_matches_the_segmenter(tmp_path):
    image = sample_images(1)[0]
    Image.fromarray(image).save(tmp_path / "one.png")
    predict_paths(tiny_onnx("fp32"), [tmp_path / "one.png"], tmp_path / "out", progress=False)
    with Segmenter.load(tiny_onnx("fp32")) as segmenter:
        (probability,) = segmenter.predict_probabilities([image])
    mask = probability > 0.5
    row = _rows(tmp_path / "out" / "predictions.csv")[str(tmp_path / "one.png")]
    expected = f"{probability[mask].mean():.6f}" if mask.any() else ""
    assert row["mean_lesion_probability"] == expected
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "one_mask.png"), mask)


def test_cli_reports_failures_with_exit_code_1(tmp_path):
    _odd_inputs(tmp_path / "in")
    result = run_cli("predict", str(tiny_onnx("fp32")), str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                     "--batch-size", "2", "--no-progress")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("skipped ") == 2 and "truncated.jpg" in result.stderr and "notes.png" in result.stderr
    assert "predicted 7 image(s), 2 failed" in result.stdout and "predictions.csv" in result.stdout


def test_cli_succeeds_on_good_files_with_paper_fit(tmp_path):
    Image.fromarray(sample_images(1)[0]).save(tmp_path / "a.png")
    result = CliRunner().invoke(cli, ["predict", str(tiny_onnx("fp32")), str(tmp_path / "a.png"), "-o",
                                      str(tmp_path / "out"), "--fit", "paper", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "fit paper" in result.output and (tmp_path / "out" / "a_overlay.png").is_file()


def test_no_images_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("predict", str(tiny_onnx("fp32")), str(tmp_path / "empty"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no images found" in result.stderr
    result = run_cli("predict", str(tiny_onnx("fp32")), str(tmp_path / "missing.png"))
    assert result.returncode == 2 and "no such file or folder" in result.stderr


def test_cli_without_a_model_uses_the_artifacts_folder(tmp_path):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    shutil.copy(tiny_onnx("fp32"), artifacts / "model.fp32.onnx")
    Image.fromarray(sample_images(1)[0]).save(tmp_path / "a.jpg")
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "a.jpg"), "--artifacts", str(artifacts),
                                      "-o", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "with model.fp32.onnx" in result.output


def test_output_names_keep_folders_and_resolve_collisions(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/x.png", "d/x.jpg", "d/sub/x.png", "y.png"):
        (tmp_path / name).write_bytes(b"")
    found = collect_images([tmp_path / "d", tmp_path / "y.png"])
    assert [key.as_posix() for _, key in found] == ["sub/x", "x_jpg", "x_png", "y"]


def test_outline_is_a_band_inside_the_mask_edge():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    band = outline(mask, width=2)
    assert band.sum() == 100 - 36  # a 10x10 square minus its 6x6 interior
    assert not band[~mask].any() and not band[8:12, 8:12].any()
    image = np.full((20, 20, 3), 7, np.uint8)
    drawn = draw_overlay(image, mask.astype(np.float32))
    assert (drawn[band] == (0, 255, 0)).all() and (drawn[~band] == 7).all()
    assert not outline(np.zeros((4, 4), bool)).any()
