"""Adversarial inputs, round two (issue 18, the items outside serving and contracts): every bad input ends
in one ``error:`` line and exit 2, a failed check in exit 1, a skipped file in exit 1 naming it; no
traceback, no user file overwritten, no output read back as an input, no allocation beyond a bound.

Every bad input is generated here at test time. Sections follow the issue's numbering.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import sample_images, tiny_onnx

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.imageio import read_mask, read_rgb, read_rgb_reduced
from ulffn_deploy.predict import MANIFEST_NAME

# ---- helpers -----------------------------------------------------------------------------------


def run(*args: str | os.PathLike[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``ulffn-deploy ARGS`` in a subprocess (bounded: a hang fails the test instead of stalling the suite)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("ULFFN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ulffn_deploy", *(os.fspath(a) for a in args)], capture_output=True,
                          text=True, errors="replace", timeout=timeout, env=env)


def assert_one_line(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit ``code``, exactly one ``error:`` line on stderr for exit 2 (containing ``words``), no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == (1 if code == 2 else 0), result.stderr[-2000:]
    for word in words:
        assert word in result.stderr, (word, result.stderr[-2000:])
    return errors[0] if errors else ""


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


GRAY = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)
GRAY_RGB = np.repeat(GRAY[..., None], 3, axis=2)
COLOUR = np.stack([GRAY, 255 - GRAY, GRAY // 2], axis=-1)


# ---- 4. every image mode decodes to what a viewer shows -----------------------------------------

def _pgm16(path: Path, values: np.ndarray, maxval: int = 65535) -> None:
    path.write_bytes(b"P5\n%d %d\n%d\n" % (values.shape[1], values.shape[0], maxval) + values.astype(">u2").tobytes())


ODD_MODES = {  # file name: (image to save, the 8-bit RGB a viewer shows)
    "i16.png": (lambda: Image.fromarray(GRAY.astype(np.uint16) * 257), GRAY_RGB),
    "i16.tif": (lambda: Image.fromarray(GRAY.astype(np.uint16) * 257), GRAY_RGB),
    "i16b.tif": (lambda: Image.fromarray((GRAY.astype(np.uint16) * 257).astype(">u2")), GRAY_RGB),
    "i32.tif": (lambda: Image.fromarray(GRAY.astype(np.int32) * 257), GRAY_RGB),
    "f01.tif": (lambda: Image.fromarray(GRAY.astype(np.float32) / 255), GRAY_RGB),
    "f255.tif": (lambda: Image.fromarray(GRAY.astype(np.float32)), GRAY_RGB),
    "l.png": (lambda: Image.fromarray(GRAY), GRAY_RGB),
    "la.png": (lambda: Image.fromarray(GRAY).convert("LA"), GRAY_RGB),
    "rgba.png": (lambda: Image.fromarray(COLOUR).convert("RGBA"), COLOUR),
    "cmyk.tif": (lambda: Image.fromarray(COLOUR).convert("CMYK"), COLOUR),
    "ycbcr.tif": (lambda: Image.fromarray(COLOUR).convert("YCbCr"), np.asarray(
        Image.fromarray(COLOUR).convert("YCbCr").convert("RGB"))),
    "p.png": (lambda: Image.fromarray(COLOUR).convert("P"), np.asarray(Image.fromarray(COLOUR).convert("P").convert("RGB"))),
    "one.png": (lambda: Image.fromarray(GRAY > 100), np.repeat((GRAY[..., None] > 100) * np.uint8(255), 3, axis=2)),
}


@pytest.mark.parametrize("name", sorted(ODD_MODES))
def test_every_image_mode_decodes_to_what_a_viewer_shows(tmp_path, name):
    make, expected = ODD_MODES[name]
    make().save(tmp_path / name)
    decoded = read_rgb(tmp_path / name)
    assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1, Image.open(tmp_path / name).mode


def test_16_bit_pgm_decodes_like_its_8_bit_source(tmp_path):
    _pgm16(tmp_path / "full.pgm", GRAY.astype(np.uint16) * 257)
    _pgm16(tmp_path / "ten_bit.pgm", (GRAY.astype(np.uint32) * 1023 + 127) // 255, maxval=1023)
    assert Image.open(tmp_path / "full.pgm").mode == "I"  # Pillow's mode for 16-bit PGM: the case of the issue
    for name in ("full.pgm", "ten_bit.pgm"):
        assert np.abs(read_rgb(tmp_path / name).astype(int) - GRAY_RGB).max() <= 1, name


def test_transparent_palette_pixels_are_black(tmp_path):
    image = Image.fromarray(COLOUR).convert("P")
    transparent = int(np.asarray(image)[0, 0])
    image.save(tmp_path / "t.png", transparency=transparent)
    decoded = read_rgb(tmp_path / "t.png")
    assert (decoded[np.asarray(image) == transparent] == 0).all()
    assert decoded[np.asarray(image) != transparent].any()


def test_a_16_bit_image_is_predicted_like_its_8_bit_source(tmp_path, model):
    image = sample_images(1)[0][..., 0]
    Image.fromarray(image).save(tmp_path / "eight.png")
    _pgm16(tmp_path / "sixteen.pgm", image.astype(np.uint16) * 257)
    Image.fromarray(image.astype(np.int32) * 257).save(tmp_path / "thirtytwo.tif")
    assert_one_line(run("predict", model, tmp_path / "eight.png", tmp_path / "sixteen.pgm", tmp_path / "thirtytwo.tif",
                        "-o", tmp_path / "out", "--no-progress"), 0)
    masks = {key: read_mask(tmp_path / "out" / f"{key}_mask.png") for key in ("eight", "sixteen", "thirtytwo")}
    assert np.array_equal(masks["eight"], masks["sixteen"]) and np.array_equal(masks["eight"], masks["thirtytwo"])


# ---- 7. malformed EXIF and fuzzed files stay inside the unreadable-file handling ----------------

def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "maker"
    exif[0x0131] = "software name"
    exif[0x8769] = {0x9003: "2024:01:01 00:00:00"}
    return exif


def _with_exif(fmt: str) -> tuple[bytes, int, int]:
    """(file bytes with an EXIF block, where the block starts, its length)."""
    buffer = io.BytesIO()
    Image.fromarray(COLOUR[:16, :24]).save(buffer, fmt, exif=_exif())
    data = buffer.getvalue()
    block = _exif().tobytes().removeprefix(b"Exif\0\0")  # the TIFF structure, as every format stores it
    start = data.find(block[:8])
    assert start > 0, fmt
    return data, start, len(block)


def _mutated(data: bytes, start: int, length: int, rng: np.random.Generator, fmt: str) -> bytes:
    out = bytearray(data)
    anywhere = rng.random() < 0.25
    for _ in range(int(rng.integers(1, 9))):
        where = int(rng.integers(0, len(out))) if anywhere else start + int(rng.integers(0, length))
        out[where] = int(rng.integers(0, 256))
    if fmt == "PNG" and not anywhere:  # keep the eXIf chunk's CRC right, so the EXIF parser sees the bytes
        chunk = data.rfind(b"eXIf", 0, start)
        body = bytes(out[chunk : start + length])
        out[start + length : start + length + 4] = zlib.crc32(body).to_bytes(4, "big")
    return bytes(out)


def test_fuzzed_images_are_read_or_refused_in_one_way():
    rng = np.random.default_rng(18)
    escaped = []
    for fmt in ("PNG", "WEBP", "JPEG"):
        data, start, length = _with_exif(fmt)
        for case in range(120):
            mutated = _mutated(data, start, length, rng, fmt)
            for reader in (read_rgb, lambda f: read_rgb_reduced(f, 8)[0], read_mask):
                try:
                    reader(io.BytesIO(mutated))
                except UlffnError:
                    pass
                except Exception as exc:  # noqa: BLE001 - the point of the test
                    escaped.append(f"{fmt} {case}: {type(exc).__name__}: {exc}")
    assert not escaped, escaped[:5]


def test_a_malformed_exif_png_in_a_folder_is_predicted(tmp_path, model, images):
    data, start, _ = _with_exif("PNG")
    broken = bytearray(data)
    broken[start : start + 2] = b"XX"  # no byte-order mark
    chunk = data.rfind(b"eXIf", 0, start)
    end = chunk + 4 + int.from_bytes(data[chunk - 4 : chunk], "big")
    broken[end : end + 4] = zlib.crc32(bytes(broken[chunk:end])).to_bytes(4, "big")
    (images / "exif.png").write_bytes(bytes(broken))
    assert_one_line(run("predict", model, images, "-o", tmp_path / "out", "--no-progress"), 0)
    assert len(csv_rows(tmp_path / "out" / "predictions.csv")) == 4


# ---- 10. label masks drawn in colour --------------------------------------------------------------

def _disc(h: int = 40, w: int = 56) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2


@pytest.mark.parametrize("colour", [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255)])
def test_a_mask_drawn_in_any_colour_is_read_as_lesion(tmp_path, colour):
    mask = _disc()
    drawn = np.zeros((*mask.shape, 3), np.uint8)
    drawn[mask] = colour
    Image.fromarray(drawn).save(tmp_path / "m.png")
    Image.fromarray(drawn).convert("P").save(tmp_path / "p.png")
    rgba = np.concatenate([drawn, (mask * 255).astype(np.uint8)[..., None]], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    for name in ("m.png", "p.png", "a.png"):
        assert np.array_equal(read_mask(tmp_path / name), mask), name


def test_a_palette_mask_is_read_by_colour_not_by_index(tmp_path):
    mask = _disc()
    image = Image.fromarray(np.where(mask, 0, 1).astype(np.uint8), mode="P")  # index 0 = lesion, drawn white
    image.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    image.save(tmp_path / "p.png")
    assert np.array_equal(read_mask(tmp_path / "p.png"), mask)


def test_score_reads_a_blue_ground_truth(tmp_path):
    mask = _disc()
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "pred" / "ISIC_0000001_mask.png")
    blue = np.zeros((*mask.shape, 3), np.uint8)
    blue[mask, 2] = 255
    Image.fromarray(blue).save(tmp_path / "truth" / "ISIC_0000001_segmentation.png")
    result = run("score", tmp_path / "pred", tmp_path / "truth", "--json")
    assert_one_line(result, 0)
    assert json.loads(result.stdout)["mean"]["dice"] == pytest.approx(1.0)


def test_a_mask_with_two_colours_and_shades_is_refused(tmp_path):
    shades = np.zeros((8, 8, 3), np.uint8)
    shades[:4, :, 2] = 255
    shades[4:6, :, 2] = 128
    Image.fromarray(shades).save(tmp_path / "m.png")
    with pytest.raises(UlffnError, match="two-valued"):
        read_mask(tmp_path / "m.png")


# ---- low: FIFOs and broken links ------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_named_on_the_command_line_is_refused_not_waited_on(tmp_path, model, images):
    os.mkfifo(tmp_path / "pipe.png")
    result = run("predict", model, tmp_path / "pipe.png", images, "-o", tmp_path / "out", "--no-progress", timeout=120)
    assert_one_line(result, 1, "pipe.png", "not a regular file")
    assert len(csv_rows(tmp_path / "out" / "predictions.csv")) == 3


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_in_a_folder_is_reported_not_waited_on(tmp_path, model, images):
    os.mkfifo(images / "pipe.png")
    result = run("predict", model, images, "-o", tmp_path / "out", "--no-progress", timeout=120)
    assert_one_line(result, 1, "pipe.png", "not a regular file")
    assert len(csv_rows(tmp_path / "out" / "predictions.csv")) == 3


def test_a_16_bit_pgm_in_a_folder_is_predicted(tmp_path, model, images):
    _pgm16(images / "sixteen.pgm", GRAY.astype(np.uint16) * 257)
    assert_one_line(run("predict", model, images, "-o", tmp_path / "out", "--no-progress"), 0)
    assert (tmp_path / "out" / "sixteen_mask.png").is_file()


def test_a_broken_symlink_in_a_folder_is_reported(tmp_path, model, images):
    (images / "gone.png").symlink_to(tmp_path / "nowhere.png")
    result = run("predict", model, images, "-o", tmp_path / "out", "--no-progress")
    assert_one_line(result, 1, "gone.png", "broken symbolic link")
    assert len(csv_rows(tmp_path / "out" / "predictions.csv")) == 3


# ---- 1. predict never overwrites a file it did not write, never reads its own outputs --------------

def test_predict_into_its_input_folder_keeps_a_users_file(tmp_path, model, images):
    Image.fromarray(sample_images(1)[0]).save(images / "lesion.png")
    truth = np.zeros((40, 56), np.uint8)
    Image.fromarray(truth).save(images / "lesion_mask.png")  # the user's own ground truth
    before = (images / "lesion_mask.png").read_bytes()
    result = run("predict", model, images, "-o", images, "--no-progress")
    assert_one_line(result, 2, "lesion_mask.png", "not written by predict")
    assert (images / "lesion_mask.png").read_bytes() == before
    assert not list(images.glob("*_overlay.png")) and not (images / "predictions.csv").exists()


def test_predict_into_its_input_folder_twice_predicts_the_images_only(tmp_path, model, images):
    for _ in range(2):
        assert_one_line(run("predict", model, images, "-o", images, "--no-progress"), 0)
    rows = csv_rows(images / "predictions.csv")
    assert sorted(row["mask"] for row in rows) == [f"ISIC_000000{i}_mask.png" for i in range(3)]
    assert not list(images.glob("*_mask_mask.png")) and not list(images.glob("*_overlay_*"))
    manifest = (images / MANIFEST_NAME).read_text().splitlines()
    assert len(manifest) == len(set(manifest)) == 1 + 3 * 3  # the CSV and each image's three names, once


def test_verify_and_calibrate_never_read_predicts_outputs_as_images(tmp_path, model, images):
    from ulffn_deploy.harness import folder_source

    assert_one_line(run("predict", model, images, "-o", images, "--no-progress"), 0)
    assert sorted(folder_source(images).ids) == [f"ISIC_000000{i}" for i in range(3)]


def test_predict_into_a_folder_inside_its_input_never_reads_earlier_outputs(tmp_path, model, images):
    for _ in range(2):
        assert_one_line(run("predict", model, images, "-o", images / "out", "--no-progress"), 0)
    assert len(csv_rows(images / "out" / "predictions.csv")) == 3
    assert sorted(p.name for p in (images / "out").glob("*.png")) == sorted(
        f"ISIC_000000{i}_{kind}.png" for i in range(3) for kind in ("mask", "overlay"))


def test_a_users_own_predictions_csv_is_not_rewritten(tmp_path, model, images):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predictions.csv").write_text("patient,notes\n1,keep me\n")
    assert_one_line(run("predict", model, images, "-o", tmp_path / "out", "--no-progress"), 2, "predictions.csv")
    assert (tmp_path / "out" / "predictions.csv").read_text() == "patient,notes\n1,keep me\n"


def test_concurrent_runs_into_the_input_folder_read_no_outputs(tmp_path, model, images):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "ulffn_deploy", "predict", str(model), str(images), "-o", str(images),
               "--no-progress", "--batch-size", "1"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(3)]
    results = [(proc.wait(timeout=300), proc.stderr.read() if proc.stderr else "") for proc in runs]
    assert all(code == 0 for code, _ in results), results
    assert sorted(row["mask"] for row in csv_rows(images / "predictions.csv")) == [
        f"ISIC_000000{i}_mask.png" for i in range(3)]


# ---- 6. a model whose outputs are NaN --------------------------------------------------------------

def nan_onnx(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose head convolution's bias is NaN: every output is NaN."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    head = [node for node in model.graph.node if node.op_type == "Conv"][-1]
    initializers = {init.name: init for init in model.graph.initializer}
    bias = initializers[head.input[2]]
    bias.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(bias), np.nan), bias.name))
    onnx.save(model, str(target))
    return target


def test_verify_fails_a_model_whose_outputs_are_nan_with_exit_1(tmp_path):
    from tiny_models import artifacts

    folder = artifacts()
    bad = nan_onnx(folder / "model.fp32.onnx", tmp_path / "model.fp32.onnx")
    result = run("verify", bad, "--artifacts", folder, "--warmup", "0", "--iterations", "1", "--json",
                 tmp_path / "report.json")
    assert_one_line(result, 1)
    assert "non-finite outputs" in result.stdout and "FAIL" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False and report["comparison"]["non_finite"] > 0


def test_predict_warns_and_marks_rows_of_nan_outputs(tmp_path, model, images):
    bad = nan_onnx(model, tmp_path / "nan.fp32.onnx")
    result = run("predict", bad, images, "-o", tmp_path / "out", "--no-progress")
    assert_one_line(result, 1, "NaN or infinite", "ISIC_0000000")
    rows = csv_rows(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 3 and all("NaN or infinite" in row["warning"] for row in rows)


def test_two_models_of_other_normalisation_are_named_for_it():
    from ulffn_deploy.config import Normalization
    from ulffn_deploy.harness import _same_input

    class Fake:
        def __init__(self, name: str, std: float) -> None:
            from ulffn_deploy.runtime.metadata import ArtifactMetadata

            self.path = Path(name)
            self.metadata = ArtifactMetadata(Normalization(std=(std,) * 3), 64, "full", "fp32", None)

    with pytest.raises(UlffnError) as caught:
        _same_input(Fake("a.onnx", 0.2), Fake("b.onnx", 0.3))  # type: ignore[arg-type]
    assert "px vs" not in str(caught.value) and "normalisation" in str(caught.value)


# ---- 5. non-finite normalisation; low: sidecar fields of the wrong type -----------------------------

@pytest.mark.parametrize(("field", "value"), [("std", "NaN"), ("std", "Infinity"), ("mean", "-Infinity")])
def test_non_finite_normalisation_in_onnx_metadata_is_refused_naming_the_field(tmp_path, images, field, value):
    import onnx

    model = onnx.load(str(tiny_onnx("fp32")))
    for prop in model.metadata_props:
        if prop.key == "ulffn.normalization":
            normalization = json.loads(prop.value)
            normalization[field][1] = "VALUE"
            prop.value = json.dumps(normalization).replace('"VALUE"', value)
    onnx.save(model, str(tmp_path / "model.fp32.onnx"))
    result = run("predict", tmp_path / "model.fp32.onnx", images, "-o", tmp_path / "out", "--no-progress")
    assert_one_line(result, 2, f"normalization {field}", "not finite")
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_non_finite_normalisation_in_a_sidecar_is_refused():
    from ulffn_deploy.runtime.metadata import ArtifactMetadata

    fields = {"normalization": {"mean": [0.5, float("nan"), 0.5], "std": [1, 1, 1]}, "input_size": 64,
              "fit_mode": "full", "precision": "fp32"}
    with pytest.raises(UlffnError, match="normalization mean .* not finite"):
        ArtifactMetadata.from_mapping(fields, "model.fp32.ort.onnx.json")


@pytest.fixture
def ort_artifact(tmp_path: Path) -> Path:
    from ulffn_deploy.targets.registry import build

    return Path(build("onnxruntime", tiny_onnx("fp32"), tmp_path / "model.fp32.ort.onnx"))


@pytest.mark.parametrize("field", ["ir", "cpu", "source_onnx"])
def test_a_sidecar_field_of_the_wrong_type_is_one_line(tmp_path, ort_artifact, images, field):
    sidecar = ort_artifact.with_name(ort_artifact.name + ".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), field: "not an object"}))
    result = run("predict", ort_artifact, images, "-o", tmp_path / "out", "--no-progress")
    assert_one_line(result, 2, field)


# ---- 8. every size is bounded before allocating; low: --max-steps 0 -------------------------------

def test_paper_fit_of_a_one_pixel_high_strip_is_refused_before_allocating():
    from ulffn_deploy.preprocess import placement_for, preprocess

    with pytest.raises(UlffnError, match="too elongated"):
        placement_for(1, 400000, 512, "paper")
    with pytest.raises(UlffnError, match="too elongated"):
        preprocess([np.zeros((1, 400000, 3), np.uint8)], 512, "paper")
    assert placement_for(767, 1022, 512, "paper").resized_hw == (512, 682)  # an ISIC image still fits


def test_verify_fit_paper_on_a_strip_is_one_line(tmp_path):
    from tiny_models import artifacts

    folder = artifacts()
    (tmp_path / "data").mkdir()
    Image.fromarray(np.full((1, 400000, 3), 128, np.uint8)).save(tmp_path / "data" / "strip.png")
    result = run("verify", folder / "model.fp32.onnx", "--artifacts", folder, "--data", tmp_path / "data", "--fit",
                 "paper", "--warmup", "0", "--iterations", "1")
    assert_one_line(result, 2, "too elongated", "1x400000")


def test_calibrate_on_a_strip_is_one_line(tmp_path, model):
    (tmp_path / "data").mkdir()
    Image.fromarray(np.full((1, 400000, 3), 128, np.uint8)).save(tmp_path / "data" / "strip.png")
    import onnx

    loaded = onnx.load(str(model))
    for prop in loaded.metadata_props:
        if prop.key == "ulffn.fit_mode":
            prop.value = "paper"  # calibrate fits images as the model was trained
    onnx.save(loaded, str(model))
    result = run("calibrate", model, "--data", tmp_path / "data", "--num-images", "1", "--num-eval", "0")
    assert_one_line(result, 2, "too elongated")


@pytest.mark.parametrize("args", [
    ("benchmark", "--batch-sizes", "99999999999999999999", "--quick"),
    ("verify", "--batch-size", "99999999999"),
    ("predict", "x.png", "--batch-size", "99999999999"),
    ("train", "--data", "d", "--out", "o", "--width", "100000"),
    ("train", "--data", "d", "--out", "o", "--max-steps", "0"),
])
def test_hostile_sizes_on_the_command_line_are_one_line(tmp_path, args):
    result = run(*args, "--artifacts", tmp_path) if args[0] != "train" else run(*args)
    assert_one_line(result, 2, args[-2] if args[0] != "benchmark" else "--batch-sizes")
