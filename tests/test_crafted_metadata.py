"""Issue 12, item 2: metadata that disagrees with the graph, or is out of bounds, is refused at load.

The crafted models run in a subprocess under an address-space limit, so code that still trusted the
metadata fails with MemoryError (exit 3) instead of exhausting the machine.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess

import pytest
from helpers import assert_one_line_error, run_cli
from PIL import Image
from tiny_models import SIZE, sample_images, tiny_onnx

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.runtime.base import check_declared_input
from ulffn_deploy.runtime.metadata import MAX_INPUT_SIZE, ArtifactMetadata, sidecar_path

onnx = pytest.importorskip("onnx")

MEMORY_LIMIT = 3 * 1024**3  # bytes of address space for the predict subprocess


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _crafted_onnx(folder, input_size: int, name: str = "model.fp32.onnx"):
    model = onnx.load(str(tiny_onnx("fp32")))
    for prop in model.metadata_props:
        if prop.key == "ulffn.input_size":
            prop.value = str(input_size)
    path = folder / name
    onnx.save(model, str(path))
    return path


def _predict(tmp_path, model) -> subprocess.CompletedProcess:
    image = tmp_path / "lesion.png"
    Image.fromarray(sample_images(1)[0]).save(image)
    return run_cli("predict", model, image, "-o", tmp_path / "out", "--no-progress", timeout=300,
                   preexec_fn=_limit_memory)


def _assert_one_line_exit_2(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert_one_line_error(proc, 2, *expected)


def test_huge_input_size_in_onnx_metadata_is_refused_before_allocating(tmp_path):
    proc = _predict(tmp_path, _crafted_onnx(tmp_path, 1_000_000))
    _assert_one_line_exit_2(proc, "input size 1000000", str(MAX_INPUT_SIZE))
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_input_size_that_disagrees_with_the_fixed_graph_input_is_refused(tmp_path):
    proc = _predict(tmp_path, _crafted_onnx(tmp_path, 2 * SIZE))
    _assert_one_line_exit_2(proc, f"input size {2 * SIZE}", f"input height is {SIZE}")


def test_dynamic_graph_accepts_any_bounded_size(tmp_path):
    from ulffn_deploy.runtime import Segmenter

    model = onnx.load(str(tiny_onnx("fp32", dynamic_hw=True)))
    for prop in model.metadata_props:
        if prop.key == "ulffn.input_size":
            prop.value = str(2 * SIZE)
    onnx.save(model, str(tmp_path / "model.fp32.onnx"))
    with Segmenter.load(tmp_path / "model.fp32.onnx") as segmenter:
        assert segmenter.input_size == 2 * SIZE
        assert segmenter.predict(sample_images(1))[0].shape == sample_images(1)[0].shape[:2]


def test_ort_sidecar_that_disagrees_with_its_model_is_refused(tmp_path):
    from ulffn_deploy.targets.onnxruntime_build import build_ort_model

    source = tmp_path / "model.fp32.onnx"
    shutil.copy(tiny_onnx("fp32"), source)
    built = build_ort_model(source)
    sidecar = json.loads(sidecar_path(built).read_text())
    sidecar["input_size"] = 1_000_000
    sidecar_path(built).write_text(json.dumps(sidecar))
    proc = _predict(tmp_path, built)
    _assert_one_line_exit_2(proc, "input size 1000000")
    sidecar["input_size"] = 2 * SIZE
    sidecar_path(built).write_text(json.dumps(sidecar))
    _assert_one_line_exit_2(_predict(tmp_path, built), f"sidecar says input size {2 * SIZE}")


@pytest.mark.parametrize("size", [0, -8, 12, MAX_INPUT_SIZE + 8, 1_000_000])
def test_metadata_bounds_the_input_size(size):
    fields = {"normalization": {"mean": [0.5] * 3, "std": [0.2] * 3}, "input_size": size, "fit_mode": "full",
              "precision": "fp16"}
    with pytest.raises(UlffnError, match=f"input size {size}"):
        ArtifactMetadata.from_mapping(fields, "model.fp16.engine.json")
    fields["input_size"] = MAX_INPUT_SIZE
    assert ArtifactMetadata.from_mapping(fields, "x").input_size == MAX_INPUT_SIZE


def test_engine_profile_must_contain_the_metadata_size(tmp_path):
    # what TrtSegmenter checks against its optimization profile (min and max H/W) before allocating
    engine = tmp_path / "model.fp16.engine"
    check_declared_input(engine, 512, (256, 256), (1024, 1024))
    with pytest.raises(UlffnError, match="input width is 512"):
        check_declared_input(engine, 1024, (None, 512), (None, 512))
    with pytest.raises(UlffnError, match="input height is 256-512"):
        check_declared_input(engine, 1024, (256, 256), (512, 512))


def test_checkpoint_with_a_huge_input_size_is_refused_by_evaluate(tmp_path):
    pytest.importorskip("torch")
    from tiny_models import tiny_checkpoint

    from ulffn_deploy.checkpoint import save_checkpoint
    from ulffn_deploy.synth import generate_dataset

    torch = pytest.importorskip("torch")
    checkpoint = torch.load(tiny_checkpoint(), weights_only=True)
    checkpoint["input_size"] = 1_000_000
    save_checkpoint(tmp_path / "best.pt", checkpoint)
    generate_dataset(tmp_path / "isic", n_train=4, n_test=2, size=40)
    proc = run_cli("evaluate", tmp_path / "best.pt", "--data", tmp_path / "isic", timeout=300, preexec_fn=_limit_memory)
    _assert_one_line_exit_2(proc, "best.pt", "input size 1000000")


def test_training_size_has_the_same_bound():
    from ulffn_deploy.train.presets import make_config

    assert make_config("d", "o", size=MAX_INPUT_SIZE).size == MAX_INPUT_SIZE
    with pytest.raises(UlffnError, match="--size"):
        make_config("d", "o", size=MAX_INPUT_SIZE + 8)
