"""PyTorch -> ONNX export: files, metadata, dynamic axes, PixelShuffle modes, FP16 typing, parity, bad inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from helpers import few_torch_threads, run_cli, run_python
from onnx import TensorProto, numpy_helper

from ulffn_deploy.checkpoint import save_checkpoint
from ulffn_deploy.cli import cli
from ulffn_deploy.config import ModelConfig, Normalization
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export import pipeline
from ulffn_deploy.export.lint import lint_model
from ulffn_deploy.export.onnx_export import ReshapePixelShuffle
from ulffn_deploy.fileio import sha256_file
from ulffn_deploy.harness import TOLERANCES
from ulffn_deploy.model import build_model
from ulffn_deploy.runtime.metadata import get_metadata, read_metadata

SIZE, WIDTH = 64, 8


@pytest.fixture(scope="module", autouse=True)
def _threads():
    yield from few_torch_threads()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig("w-ac", WIDTH)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {
        "model_config": model.config.to_dict(), "normalization": Normalization().to_dict(), "input_size": SIZE,
        "fit_mode": "paper", "state_dict": model.state_dict(), "epoch": 1,
    })
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    result = pipeline.export_checkpoint(checkpoint, out, images=4, log=lambda line: None)
    return result


def ort_session(path):
    from ulffn_deploy.onnx_session import create_session

    return create_session(path)


def run_session(session, batch):
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def _load_model(checkpoint):
    from ulffn_deploy.checkpoint import load_model

    return load_model(checkpoint)[0]


def _nodes(path, op_type):
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == op_type]


def test_export_writes_both_files_and_passes_parity(exported):
    assert sorted(p.name for p in exported.paths["fp32"].parent.iterdir()) == ["model.fp16.onnx", "model.fp32.onnx"]
    assert exported.failed == {} and set(exported.comparisons) == {"fp32", "fp16"}
    for precision, comparison in exported.comparisons.items():
        assert all(c.passed for c in exported.checks[precision]), exported.checks[precision]
        assert comparison.images == 4 and comparison.candidate.startswith(f"onnxruntime {precision}")
        assert comparison.metrics is not None  # synthetic images come with labels
    fp32, fp16 = exported.comparisons["fp32"], exported.comparisons["fp16"]
    assert fp32.max_abs_diff < 1e-4 and fp32.mask_dice == 1.0
    assert 0 < fp16.p99_abs_diff <= TOLERANCES["fp16"].max_p99_abs_diff


def test_metadata_props_are_complete_and_readable_without_onnx(exported, checkpoint):
    for precision, path in exported.paths.items():
        meta = read_metadata(path)
        assert meta == get_metadata(onnx.load(str(path)))
        assert meta.precision == precision
        assert meta.model_config == ModelConfig("w-ac", WIDTH)
        assert meta.normalization == Normalization()
        assert meta.input_size == SIZE and meta.fit_mode == "paper"
        assert meta.checkpoint_sha256 == sha256_file(checkpoint)
    result = run_python(
        f"""
        from ulffn_deploy.runtime.metadata import read_metadata
        print(read_metadata({str(exported.paths["fp16"])!r}).precision)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fp16" and result.imported == ["onnxruntime"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_dynamic_batch_runs_in_onnxruntime(exported, precision):
    session = ort_session(exported.paths[precision])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("image", "probabilities")
    assert inp.type == out.type == "tensor(float)"
    assert inp.shape == ["batch", 3, SIZE, SIZE]
    batch = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE), dtype=np.float32)
    three = run_session(session, batch)
    one = run_session(session, batch[1:2])
    assert three.shape == (3, 2, SIZE, SIZE)
    np.testing.assert_allclose(three.sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(one[0], three[1], atol=1e-5)


def test_pixel_shuffle_is_depth_to_space_crd_and_graph_is_clean(exported):
    path = exported.paths["fp32"]
    modes = [onnx.helper.get_attribute_value(a) for n in _nodes(path, "DepthToSpace") for a in n.attribute
             if a.name == "mode"]
    assert modes == [b"CRD"] * 3  # three sub-pixel upsamplings
    model = onnx.load(str(path))
    used = {name for node in model.graph.node for name in node.input}
    assert all(init.name in used for init in model.graph.initializer)
    assert not [n for n in model.graph.node if n.op_type in ("Identity", "Transpose")]
    assert lint_model(model) == []


def test_cam_variance_pooling_has_constant_axes(exported):
    cam = [n for n in onnx.load(str(exported.paths["fp32"])).graph.node if n.name.startswith("/model/cam/")]
    reductions = [n for n in cam if n.op_type == "ReduceMean"]
    assert len(reductions) == 2  # mean, and mean of squared deviations
    for node in reductions:
        assert len(node.input) == 1  # axes as an attribute at opset 17, not a run-time input
        axes = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axes"]
        assert axes == [[2, 3]]
    assert {"Sub", "Mul", "Concat", "Sigmoid"} <= {n.op_type for n in cam}


def _tensor_types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def test_fp16_graph_keeps_cam_statistics_and_softmax_in_fp32(exported):
    model = onnx.load(str(exported.paths["fp16"]))
    graph, types = model.graph, _tensor_types(model)
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    statistics = [n for n in graph.node if n.name.startswith(("/model/cam/statistics/", "/model/cam/excitation/"))
                  and n.op_type != "Cast"]
    assert len(statistics) == 9
    for node in statistics + [n for n in graph.node if n.op_type == "Softmax"]:
        assert all(types[name] == TensorProto.FLOAT for name in [*node.input, *node.output]), node.name
    fp32_readers = {name for node in statistics for name in node.input}
    floats = [i for i in graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    fp32 = {i.name for i in floats if i.data_type == TensorProto.FLOAT}
    assert fp32 and fp32 <= fp32_readers  # every FP32 weight belongs to the CAM block
    assert sum(i.data_type == TensorProto.FLOAT16 for i in floats) > 50
    gating = [n for n in graph.node if n.name in ("/model/cam/Mul", "/model/cam/Add")]
    assert gating and all(types[n.output[0]] == TensorProto.FLOAT16 for n in gating)
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert len(casts) == 4  # image in, CAM in, CAM weights out, Softmax in: no round trips


def test_reshape_pixel_shuffle_matches_nn_pixel_shuffle():
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(ReshapePixelShuffle(2)(x), torch.nn.PixelShuffle(2)(x), rtol=0, atol=0)


def test_cli_reshape_mode_and_dynamic_hw(exported, checkpoint, tmp_path):
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(tmp_path), "--dynamic-hw",
                                      "--pixel-shuffle", "reshape", "--images", "2"])
    assert result.exit_code == 0, result.output
    assert "| fp16 | 2 |" in result.output and "wrote" in result.output
    path = tmp_path / "model.fp32.onnx"
    assert not _nodes(path, "DepthToSpace") and len(_nodes(path, "Transpose")) == 3
    session = ort_session(path)
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    batch = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    d2s = run_session(ort_session(exported.paths["fp32"]), batch)
    np.testing.assert_allclose(run_session(session, batch), d2s, atol=1e-5)
    model = _load_model(checkpoint)
    for hw in [(32, 32), (48, 64)]:
        x = np.random.default_rng(2).standard_normal((1, 3, *hw), dtype=np.float32)
        with torch.no_grad():
            expected = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
        for name in ("model.fp32.onnx", "model.fp16.onnx"):
            got = run_session(ort_session(tmp_path / name), x)
            assert got.shape == (1, 2, *hw)
            np.testing.assert_allclose(got, expected, atol=1e-4 if "fp32" in name else 1e-2)


def _broken_fp16(monkeypatch):
    """Export builds an FP16 graph whose head weights are tripled: its masks no longer match PyTorch's."""
    build = pipeline.build_graphs

    def perturbed(model, meta, options):
        graphs = build(model, meta, options)
        head = next(i for i in graphs["fp16"].graph.initializer if i.name == "model.head.weight")
        head.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head) * 3, head.name))
        return graphs

    monkeypatch.setattr(pipeline, "build_graphs", perturbed)


def test_failing_fp16_still_writes_fp32_and_keeps_the_older_fp16(checkpoint, tmp_path, monkeypatch):
    _broken_fp16(monkeypatch)
    (tmp_path / "model.fp16.onnx").write_bytes(b"an older export")
    lines = []
    result = pipeline.export_checkpoint(checkpoint, tmp_path, images=2, log=lines.append)
    assert set(result.paths) == {"fp32"} and set(result.failed) == {"fp16"}
    assert "mask agreement" in result.failed["fp16"] or "p99" in result.failed["fp16"]
    assert "| fp32 | 2 |" in lines[0] and "| fp16 | 2 |" in lines[0] and "FAIL" in lines[0]
    assert read_metadata(tmp_path / "model.fp32.onnx").precision == "fp32"
    assert (tmp_path / "model.fp16.onnx").read_bytes() == b"an older export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.onnx", "model.fp32.onnx"]  # no temporary left


def test_cli_exits_1_naming_the_failed_precision(checkpoint, tmp_path, monkeypatch):
    _broken_fp16(monkeypatch)
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(tmp_path), "--images", "2"])
    assert result.exit_code == 1, result.output
    assert "wrote " in result.stdout and "model.fp32.onnx" in result.stdout
    assert "FP16 failed its checks and was not written" in result.stderr
    assert not (tmp_path / "model.fp16.onnx").exists()


def test_foreign_checkpoint_is_a_one_line_error(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    result = run_cli("export", str(foreign), "-o", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "not an ulffn-deploy checkpoint" in result.stderr
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    for path in (text, tmp_path / "missing.pt"):
        with pytest.raises(UlffnError, match="checkpoint"):
            pipeline.export_checkpoint(path, tmp_path / "out", images=1)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir_is_a_one_line_error(checkpoint, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("export", str(checkpoint), "-o", str(blocker / "out"), "--images", "1")
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot create the output folder") and result.stderr.count("\n") == 1
