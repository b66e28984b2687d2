"""The Segmenter interface on the CPU backends (ONNX Runtime, PyTorch), metadata and engine compatibility."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from tiny_models import SIZE, sample_images, tiny_checkpoint, tiny_onnx

from ulffn_deploy.config import ModelConfig, Normalization
from ulffn_deploy.devices import tensorrt_unavailable_reason
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.preprocess import preprocess
from ulffn_deploy.runtime import ArtifactMetadata, Segmenter
from ulffn_deploy.runtime.metadata import read_sidecar
from ulffn_deploy.targets.tensorrt_compat import engine_compatibility_problem


@pytest.fixture(scope="module")
def onnx_segmenter():
    with Segmenter.load(tiny_onnx("fp32")) as segmenter:
        yield segmenter


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def test_infer_returns_class_probabilities(onnx_segmenter):
    probabilities = onnx_segmenter.infer(_batch(3))
    assert probabilities.shape == (3, 2, SIZE, SIZE) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert probabilities[:, 1].std() > 1e-3  # the tiny model's output varies over pixels and images
    assert onnx_segmenter.last_timings["compute"] > 0 and onnx_segmenter.last_timings["chunks"] == 1
    assert onnx_segmenter.infer(np.zeros((0, 3, SIZE, SIZE), np.float32)).shape == (0, 2, SIZE, SIZE)


def test_predict_gives_masks_at_original_size_consistent_with_probabilities(onnx_segmenter):
    images = sample_images(5)
    masks = onnx_segmenter.predict(images)
    probabilities = onnx_segmenter.predict_probabilities(images)
    assert [m.shape for m in masks] == [im.shape[:2] for im in images]
    assert all(m.dtype == np.bool_ for m in masks)
    for mask, probability in zip(masks, probabilities):
        assert probability.dtype == np.float32 and 0 <= probability.min() and probability.max() <= 1
        np.testing.assert_array_equal(mask, probability > 0.5)


def test_paper_fit_mode_is_background_outside_the_crop(onnx_segmenter):
    wide = np.full((32, 96, 3), 90, np.uint8)
    (paper,) = onnx_segmenter.predict_probabilities([wide], fit_mode="paper")
    (full,) = onnx_segmenter.predict_probabilities([wide])
    assert onnx_segmenter.fit_mode == "full"
    assert np.all(paper[:, :30] == 0) and np.all(paper[:, -30:] == 0)
    assert full[:, :30].max() > 0


def test_large_batches_are_split_into_chunks_with_the_same_result():
    batch = _batch(5, seed=1)
    with Segmenter.load(tiny_onnx("fp32")) as whole, Segmenter.load(tiny_onnx("fp32")) as chunked:
        chunked.max_batch = 2
        np.testing.assert_allclose(chunked.infer(batch), whole.infer(batch), atol=1e-6)
        assert chunked.last_timings["chunks"] == 3


@pytest.mark.parametrize(
    "batch, message",
    [
        (np.zeros((1, 4, SIZE, SIZE), np.float32), "N x 3 x H x W"),
        (np.zeros((3, SIZE, SIZE), np.float32), "N x 3 x H x W"),
        (np.zeros((1, 3, SIZE, SIZE), np.uint8), "float32"),
        (np.zeros((1, 3, SIZE + 8, SIZE), np.float32), "takes 32x32 inputs"),
    ],
)
def test_bad_batches_are_refused_with_the_expected_shape(onnx_segmenter, batch, message):
    with pytest.raises(UlffnError, match=message):
        onnx_segmenter.infer(batch)


def test_bad_images_are_refused(onnx_segmenter):
    with pytest.raises(UlffnError, match="image 1: expected HxWx3 uint8"):
        onnx_segmenter.predict([sample_images(1)[0], np.zeros((8, 8), np.uint8)])


def test_info_describes_the_artifact(onnx_segmenter):
    info = onnx_segmenter.info
    assert info["backend"] == "onnxruntime" and info["precision"] == "fp32"
    assert info["input_size"] == SIZE and info["fit_mode"] == "full" and info["training_fit_mode"] == "paper"
    assert info["model_config"] == {"variant": "w-ac", "width": 8}
    assert info["providers"] == ["CPUExecutionProvider"] and info["offline_optimized"] is False
    json.dumps(info)


def test_close_and_context_manager():
    segmenter = Segmenter.load(tiny_onnx("fp32"))
    with segmenter as entered:
        assert entered is segmenter
    with pytest.raises(UlffnError, match="is closed"):
        segmenter.infer(_batch(1))
    segmenter.close()  # twice is fine
    assert "closed" in repr(segmenter)


def test_backends_agree_on_the_same_model():
    images = sample_images(3)
    batch, _ = preprocess(images, SIZE, "full", Normalization())
    with Segmenter.load(tiny_checkpoint()) as torch_ref, Segmenter.load(tiny_onnx("fp32")) as fp32, \
            Segmenter.load(tiny_onnx("fp16")) as fp16:
        reference = torch_ref.infer(batch)
        assert torch_ref.info["backend"] == "pytorch" and torch_ref.info["epoch"] == 1
        assert np.abs(fp32.infer(batch) - reference).max() < 1e-4
        assert np.abs(fp16.infer(batch) - reference).max() < 2e-2
        assert fp16.precision == "fp16"


def test_dynamic_size_onnx_runs_at_its_input_size():
    with Segmenter.load(tiny_onnx("fp32", dynamic_hw=True)) as segmenter:
        masks = segmenter.predict(sample_images(2))
        assert [m.shape for m in masks] == [im.shape[:2] for im in sample_images(2)]
        assert segmenter.infer(_batch(1)[:, :, :24, :16]).shape == (1, 2, 24, 16)


@pytest.mark.parametrize("name, message", [("model.txt", "unknown model type"), ("missing.onnx", "no such model file")])
def test_load_refuses_unknown_or_missing_files(tmp_path, name, message):
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(UlffnError, match=message):
        Segmenter.load(tmp_path / name)


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT and a GPU are available here")
def test_engine_without_tensorrt_says_what_is_missing(tmp_path):
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(UlffnError) as caught:
        Segmenter.load(engine)
    message = str(caught.value)
    assert message.startswith("cannot run model.fp16.engine with tensorrt: ") and "\n" not in message
    assert "--backend onnxruntime" in message  # the CPU alternative


def test_onnx_without_our_metadata_is_refused(tmp_path):
    import onnx

    model = onnx.load(str(tiny_onnx("fp32")))
    del model.metadata_props[:]
    path = tmp_path / "plain.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UlffnError, match="no ulffn"):
        Segmenter.load(path)


# -- metadata ------------------------------------------------------------------------------------------
def test_metadata_from_onnx_props_sidecars_and_objects_alike():
    props = {"ulffn.normalization": json.dumps(Normalization().to_dict()), "ulffn.input_size": "64",
             "ulffn.model_config": json.dumps({"variant": "w-a", "width": 16}), "ulffn.fit_mode": "paper",
             "ulffn.precision": "fp16", "ulffn.checkpoint_sha256": "ab", "author": "someone"}
    from_props = ArtifactMetadata.from_mapping(props, "m.onnx")
    from_objects = ArtifactMetadata.from_mapping(
        {"normalization": Normalization(), "input_size": 64, "model_config": ModelConfig("w-a", 16),
         "fit_mode": "paper", "precision": "fp16", "checkpoint_sha256": "ab"}, "m.onnx")
    sidecar = from_props.to_dict() | {"format": "ulffn-deploy-artifact", "backend": "tensorrt"}
    from_sidecar = ArtifactMetadata.from_mapping(json.loads(json.dumps(sidecar)), "m.engine.json")
    assert from_props == from_objects == replace(from_sidecar, extra={})
    assert from_props.model_config == ModelConfig("w-a", 16) and from_props.checkpoint_sha256 == "ab"
    assert from_props.toolkit_version is None and from_props.extra == {}  # foreign ONNX props are not ours
    assert from_sidecar.extra == {"format": "ulffn-deploy-artifact", "backend": "tensorrt"}


GOOD = {"normalization": Normalization(), "input_size": 32, "model_config": ModelConfig("w-a", 16),
        "fit_mode": "paper", "precision": "fp32"}


@pytest.mark.parametrize(("broken", "expected"), [
    ({"author": "someone"}, "m.onnx: no ulffn metadata"),
    ({key: value for key, value in GOOD.items() if key != "fit_mode"}, "m.onnx: its ulffn metadata lacks fit_mode"),
    (GOOD | {"input_size": "x", "normalization": "{}"}, "m.onnx: unreadable ulffn metadata"),
    (GOOD | {"precision": "fp8"}, "m.onnx: unknown fit mode 'paper' or precision 'fp8'"),
])
def test_bad_metadata_is_one_clear_error(broken, expected):
    ArtifactMetadata.from_mapping(GOOD, "m.onnx")
    with pytest.raises(UlffnError, match=expected):
        ArtifactMetadata.from_mapping(broken, "m.onnx")


def test_onnx_metadata_round_trip_keeps_foreign_props():
    onnx = pytest.importorskip("onnx")
    from ulffn_deploy.runtime.metadata import get_metadata, set_metadata

    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.helper.set_model_props(model, {"author": "someone"})
    meta = ArtifactMetadata.from_mapping(GOOD | {"checkpoint_sha256": "ab" * 32, "toolkit_version": "0.1.0"}, "m")
    set_metadata(model, meta)
    set_metadata(model, meta.with_precision("fp16"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["author"] == "someone" and props["ulffn.precision"] == "fp16" and len(props) == 8
    assert get_metadata(model) == meta.with_precision("fp16")
    with pytest.raises(UlffnError, match="unknown precision"):
        meta.with_precision("int4")
    with pytest.raises(UlffnError, match="lacks checkpoint_sha256"):
        set_metadata(model, replace(meta, checkpoint_sha256=None))  # an exported file records its checkpoint


def test_sidecar_must_exist_and_be_ours(tmp_path):
    engine = tmp_path / "model.fp16.engine"
    with pytest.raises(UlffnError, match="sidecar model.fp16.engine.json is missing"):
        read_sidecar(engine)
    (tmp_path / "model.fp16.engine.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UlffnError, match="not an ulffn-deploy sidecar"):
        read_sidecar(engine)


H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _sidecar(trt="10.13.0.35", cc="9.0", **flags):
    return {"tensorrt_version": trt, "gpu": {"name": "NVIDIA H100 PCIe", "compute_capability": cc},
            "build_flags": {"version_compatible": False, "hardware_compatibility": "none", **flags}}


@pytest.mark.parametrize(
    "sidecar, running_trt, problem",
    [
        (_sidecar(), "10.13.0.35", None),  # another H100 model, same compute capability
        (_sidecar(), "10.13.1.2", "built with TensorRT 10.13.0.35 and this is TensorRT 10.13.1.2"),
        (_sidecar(cc="8.6"), "10.13.0.35", "compute capability 8.6"),
        (_sidecar(version_compatible=True), "10.14.0.1", None),
        (_sidecar(version_compatible=True), "11.0.0.1", None),  # version-compatible plans of 10 run on 11
        (_sidecar(version_compatible=True), "10.12.0.1", "this is TensorRT 10.12.0.1"),
        (_sidecar(cc="8.0", hardware_compatibility="ampere-plus"), "10.13.0.35", None),
    ],
)
def test_engine_compatibility(sidecar, running_trt, problem):
    found = engine_compatibility_problem(sidecar, H100, running_trt)
    assert (found is None) if problem is None else (problem in found)


def test_ampere_plus_engines_refuse_older_gpus():
    turing = {"name": "Tesla T4", "compute_capability": "7.5"}
    problem = engine_compatibility_problem(_sidecar(hardware_compatibility="ampere-plus"), turing, "10.13.0.35")
    assert "Ampere" in problem and "7.5" in problem


def test_int8_qdq_model_runs_close_to_fp32():
    batch, _ = preprocess(sample_images(4), SIZE, "full", Normalization())
    with Segmenter.load(tiny_onnx("int8")) as int8, Segmenter.load(tiny_onnx("fp32")) as fp32:
        assert int8.precision == "int8" and int8.info["training_fit_mode"] == "paper"
        difference = np.abs(int8.infer(batch) - fp32.infer(batch))
        assert difference.mean() < 0.05
