"""Embedding on a CPU device: the ONNX Runtime path imports neither torch, onnx nor tensorrt."""

from __future__ import annotations

import json
import shutil

import numpy as np
from helpers import run_python
from PIL import Image
from tiny_models import sample_images, tiny_onnx


def test_segmenter_predicts_masks_without_torch_onnx_or_tensorrt(tmp_path):
    images = sample_images(3)
    np.save(tmp_path / "images.npy", np.array(images, dtype=object), allow_pickle=True)
    result = run_python(
        f"""
        import json
        import numpy as np
        from ulffn_deploy.runtime import Segmenter

        images = list(np.load({str(tmp_path / "images.npy")!r}, allow_pickle=True))
        with Segmenter.load({str(tiny_onnx("fp32"))!r}) as seg:
            masks = seg.predict(images)
            probabilities = seg.predict_probabilities(images)
            info = seg.info
        assert all((m == (p > 0.5)).all() for m, p in zip(masks, probabilities))
        print(json.dumps({{"shapes": [list(m.shape) for m in masks], "dtypes": [str(m.dtype) for m in masks],
                          "lesion": [int(m.sum()) for m in masks], "backend": info["backend"]}}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["shapes"] == [list(im.shape[:2]) for im in images]
    assert report["dtypes"] == ["bool"] * 3 and report["backend"] == "onnxruntime"
    assert result.imported == ["onnxruntime"]
    assert 0 < sum(report["lesion"]) < sum(im.shape[0] * im.shape[1] for im in images)


def test_cpu_device_builds_and_predicts_from_the_command_line(tmp_path):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    shutil.copy(tiny_onnx("fp32"), artifacts / "model.fp32.onnx")
    Image.fromarray(sample_images(1)[0]).save(tmp_path / "lesion.jpg")
    result = run_python(
        f"""
        from ulffn_deploy.cli import main
        for argv in (["build-engine", "--backend", "onnxruntime", "--artifacts", {str(artifacts)!r}],
                     ["predict", {str(tmp_path / "lesion.jpg")!r}, "--artifacts", {str(artifacts)!r},
                      "-o", {str(tmp_path / "out")!r}, "--no-progress"]):
            try:
                main(argv)
            except SystemExit as exc:
                assert not exc.code, exc.code
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.heavy == []
    assert "with model.fp32.ort.onnx (onnxruntime, fp32" in result.stdout  # the built artifact is preferred
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".ulffn-predict-outputs", "lesion_mask.png",
                                                                   "lesion_overlay.png", "predictions.csv"]


def test_engine_path_needs_no_onnxruntime(tmp_path):
    """A TensorRT device needs numpy, Pillow, tensorrt and cuda-python: loading an engine never imports
    onnxruntime (here tensorrt behaves as not installed, so the load stops at the one-line TensorRT error)."""
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"plan")
    result = run_python(
        f"""
        from ulffn_deploy.errors import UlffnError
        from ulffn_deploy.runtime import Segmenter
        try:
            Segmenter.load({str(engine)!r})
        except UlffnError as exc:
            print(exc)
        """,
        absent=("tensorrt",),
    )
    assert result.returncode == 0, result.stderr
    assert result.imported == []
    (line,) = result.stdout.splitlines()
    assert line.startswith("cannot run model.fp16.engine with tensorrt: ")
