"""import-model: a segmentation model that is not ULFFN, through the whole pipeline (CPU, tiny inputs).

Two models unlike ULFFN: a small U-Net in PyTorch with one sigmoid channel (a factory in a package
written here, weights loaded weights-only), and an ONNX-only model built with ``onnx.helper`` that
takes BGR pixels normalised in 0-255 units and returns softmax probabilities over 3 classes, lesion
= class 2. Both get a darkness prior so that their masks follow the synthetic lesions.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, run_cli, run_python
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ulffn_deploy.cli import cli
from ulffn_deploy.contract import load_contract, rules_from_json
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.export.import_model import import_model
from ulffn_deploy.export.lint import lint_model
from ulffn_deploy.export.trt_gate import inspect_onnx
from ulffn_deploy.keep_fp32 import ULFFN_KEEP_FP32, keep_fp32_nodes
from ulffn_deploy.latency import Schedule
from ulffn_deploy.runtime import Segmenter
from ulffn_deploy.runtime.metadata import read_metadata
from ulffn_deploy.synth import generate_dataset
from ulffn_deploy.targets import registry

SIZE = 32
QUIET = {"log": lambda line: None}
FAST = Schedule(warmup_iterations=0, iterations=2, duration_s=0.0)

UNET_SOURCE = '''
import torch
from torch import nn


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class SmallUNet(nn.Module):
    """Two levels, skip connection, one output channel of logits (plus a 1x1 darkness prior)."""

    def __init__(self, width=8):
        super().__init__()
        self.enc1, self.enc2 = block(3, width), block(width, 2 * width)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = block(2 * width, width)
        self.head = nn.Conv2d(width, 1, 1)
        self.prior = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        d = self.dec(torch.cat([self.up(e2), e1], dim=1))
        return self.prior(x) + 0.3 * self.head(d)


def build(width=8):
    return SmallUNet(width)
'''

UNET_CONTRACT = '''
name = "acme-unet"

[source]
factory = "acme_models.unet:build"
weights = "unet.pt"
args = { width = 8 }
python_path = "."

[input]
size = 32
channels = "RGB"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
fit = "full"

[output]
values = "logits"
activation = "sigmoid"

[[precision.keep_fp32]]
op = "Conv"
reads_input = true
precisions = ["int8"]
reason = "convolutions on the image"

[[precision.keep_fp32]]
name = "/head/*"
reason = "the head"
'''

ONNX_CONTRACT = '''
name = "derm3"

[source]
onnx = "derm3.onnx"

[input]
size = 32
channels = "BGR"
mean = [103.53, 116.28, 123.675]
std = [57.375, 57.12, 58.395]
scale = 255
fit = "full"

[output]
values = "probabilities"
activation = "softmax"
classes = 3
lesion_class = 2

[[precision.keep_fp32]]
name = "prior_conv"
precisions = ["int8"]
reason = "the darkness prior"
'''


def write_unet(folder):
    import torch

    package = folder / "acme_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "unet.py").write_text(UNET_SOURCE)
    namespace: dict = {}
    exec(compile(UNET_SOURCE, "unet", "exec"), namespace)  # the same module, to write its weights
    torch.manual_seed(0)
    model = namespace["build"](8)
    with torch.no_grad():
        model.prior.weight.fill_(-5 / 3)  # lesions are darker than the skin around them
        model.prior.bias.zero_()
    torch.save(model.state_dict(), folder / "unet.pt")
    (folder / "unet.toml").write_text(UNET_CONTRACT)
    return folder / "unet.toml"


def derm3_graph(inputs=None, outputs=None, extra_nodes=(), opset=17) -> onnx.ModelProto:
    """BGR pixels (0-255 normalised) -> softmax over (skin, other, lesion), 32 x 32, dynamic batch."""
    rng = np.random.default_rng(0)
    prior = np.zeros((3, 3, 1, 1), np.float32)
    prior[0], prior[2] = 5 / 3, -5 / 3
    weights = {
        "body_w": rng.normal(0, 0.2, (8, 3, 3, 3)), "body_b": np.zeros(8),
        "head_w": rng.normal(0, 0.1, (3, 8, 1, 1)), "head_b": np.zeros(3),
        "prior_w": prior, "prior_b": np.array([0.0, -1.0, 0.0]),
    }
    initializers = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()]
    nodes = [
        helper.make_node("Conv", ["pixels", "body_w", "body_b"], ["body"], name="body_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["body"], ["body_relu"], name="body_relu"),
        helper.make_node("Conv", ["body_relu", "head_w", "head_b"], ["head"], name="head_conv"),
        helper.make_node("Conv", ["pixels", "prior_w", "prior_b"], ["prior"], name="prior_conv"),
        helper.make_node("Add", ["head", "prior"], ["logits"], name="add"),
        helper.make_node("Softmax", ["logits"], ["scores"], name="softmax", axis=1),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes, "derm3",
        inputs or [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        outputs or [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def write_derm3(folder, model=None, contract=ONNX_CONTRACT):
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model or derm3_graph(), str(folder / "derm3.onnx"))
    (folder / "derm3.toml").write_text(contract)
    return folder / "derm3.toml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("byo-data")
    generate_dataset(folder, n_train=8, n_test=4, size=40, seed=1)
    return folder


@pytest.fixture(scope="module", params=["unet", "derm3"])
def imported(request, tmp_path_factory):
    """(contract, artifacts folder) after import-model through the CLI."""
    folder = tmp_path_factory.mktemp(request.param)
    contract = write_unet(folder / "model") if request.param == "unet" else write_derm3(folder / "model")
    out = folder / "artifacts"
    trust = ["--trust-code"] if request.param == "unet" else []  # an ONNX source runs no code: no flag needed
    result = CliRunner().invoke(cli, ["import-model", str(contract), "-o", str(out), "--images", "4", *trust])
    assert result.exit_code == 0, result.output
    assert "| fp32 | 4 |" in result.output and "wrote" in result.output
    return load_contract(contract), out


# -- the whole pipeline -----------------------------------------------------------------------------------

def test_imported_graph_has_the_toolkits_io_and_metadata(imported):
    contract, out = imported
    model = onnx.load(str(out / "model.fp32.onnx"))
    (image,), (probabilities,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert (image.name, dims) == ("image", ["batch", 3, SIZE, SIZE])
    assert probabilities.name == "probabilities"
    meta = read_metadata(out / "model.fp16.onnx")
    assert meta.model_config is None and meta.extra["model"] == contract.name and meta.precision == "fp16"
    assert meta.input_size == SIZE and meta.fit_mode == "full"
    if contract.input.channels == "BGR":  # stored as RGB in [0, 1]: reversed and divided by 255
        assert meta.normalization.mean == pytest.approx((123.675 / 255, 116.28 / 255, 103.53 / 255))
        assert any(node.op_type == "Gather" for node in model.graph.node)
    recorded = json.loads(meta.extra["keep_fp32"])
    assert rules_from_json(recorded[: len(contract.keep_fp32)]) == contract.keep_fp32


def test_outputs_are_background_and_lesion_probabilities(imported):
    _, out = imported
    batch = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    with Segmenter.load(out / "model.fp32.onnx") as seg:
        probabilities = seg.infer(batch)
    assert probabilities.shape == (3, 2, SIZE, SIZE)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-6)
    assert 0 < (probabilities[:, 1] > 0.5).mean() < 1


def test_fp16_keeps_the_head_fp32(imported):
    _, out = imported
    fp16 = onnx.load(str(out / "model.fp16.onnx"))
    inits = {i.name: i.data_type for i in fp16.graph.initializer}
    convs = {n.name: inits.get(n.input[1]) for n in fp16.graph.node if n.op_type == "Conv"}
    assert TensorProto.FLOAT16 in convs.values()  # the body is FP16 ...
    head = [name for name in convs if "head" in name]
    if any(rule.name == "/head/*" and "fp16" in rule.precisions for rule in load_contract_rules(out)):
        assert head and all(convs[name] == TensorProto.FLOAT for name in head)  # ... the head, as asked, FP32


def load_contract_rules(out):
    return list(rules_from_json(json.loads(read_metadata(out / "model.fp32.onnx").extra["keep_fp32"])))


def test_calibrate_build_verify_and_predict(imported, data, tmp_path):
    from ulffn_deploy.calib.pipeline import calibrate
    from ulffn_deploy.predict import predict_paths
    from ulffn_deploy.verify import verify_artifact

    contract, out = imported
    report = calibrate(out / "model.fp32.onnx", data, num_images=6, num_eval=4, **QUIET)
    assert report["accuracy"].get("targets_met") is not False
    excluded = {entry["node"] for entry in report["graph"]["excluded"]}
    expected = keep_fp32_nodes(onnx.load(str(out / "model.fp32.onnx")).graph, load_contract_rules(out), "int8")
    assert excluded == set(expected) and excluded
    assert read_metadata(out / "model.int8.onnx").extra["model"] == contract.name
    for precision in ("fp32", "fp16", "int8"):  # NVIDIA's parser and builder (tensorrt_rtx builds without a GPU)
        assert [str(issue) for issue in lint_model(out / f"model.{precision}.onnx")] == []  # and the fallback table
        gate = inspect_onnx(out / f"model.{precision}.onnx")
        assert gate.ok and (gate.built or gate.fallback_reason is not None), gate.problems

    built = [registry.build("onnxruntime", out / f"model.{p}.onnx") for p in ("fp32", "int8")]
    if "openvino" in registry.names() and registry.target_named("openvino").unavailable_reason() is None:
        built.append(registry.build("openvino", out / "model.int8.onnx"))
    for artifact in [out / "model.fp16.onnx", out / "model.int8.onnx", *built]:
        report = verify_artifact(artifact, out / "model.fp32.onnx", data, schedule=FAST, record=False)
        assert report["passed"], (artifact.name, report["checks"])
        assert report["checkpoint_match"]["checked"]
        if ".int8." in artifact.name:  # labels exist: INT8 must not lose label Dice either
            assert any(c["name"].startswith("label Dice") and c["passed"] is True for c in report["checks"])
    assert any(path.suffix == ".xml" for path in built) or "openvino" not in registry.names()

    images = sorted((data / "ISBI2016_ISIC_Part1_Test_Data").glob("*.jpg"))
    summary = predict_paths(str(built[-1]), [str(p) for p in images], tmp_path / "predictions", progress=False,
                            report=lambda line: None)
    assert not summary.failed
    for image in images:
        mask = Image.open(tmp_path / "predictions" / f"{image.stem}_mask.png")
        assert mask.size == Image.open(image).size


def test_verify_defaults_to_the_fp32_onnx_without_a_checkpoint(imported, data):
    from ulffn_deploy.verify import verify_artifact

    _, out = imported
    report = verify_artifact(out / "model.fp16.onnx", None, data, artifacts_dir=out, schedule=FAST, record=False)
    assert report["reference"]["path"] == str(out / "model.fp32.onnx") and report["passed"]


def test_benchmark_takes_the_fp32_onnx_as_its_reference(imported, data, tmp_path):
    from ulffn_deploy.benchmark import run_benchmark

    contract, out = imported
    results = run_benchmark(out, tmp_path, batch_sizes=[1], quick=True, data_dir=data, build=False,
                            backends=["onnxruntime"])
    reference, *others = [row for row in results["rows"] if row["status"] == "ok"]
    assert (reference["backend"], reference["path"]) == ("onnxruntime", "model.fp32.onnx")
    assert others and all(row["passed"] for row in others) and "model.fp32.onnx" not in [r["path"] for r in others]
    assert results["model"]["name"] == contract.name and results["model"]["gflops"] is None
    assert f"Model: {contract.name} (imported)" in (tmp_path / "benchmark.md").read_text()


# -- models that do not fit: one line naming the node or field, before any long work ---------------------

def _import_error(folder, model=None, contract=ONNX_CONTRACT) -> str:
    path = write_derm3(folder, model, contract)
    with pytest.raises(UlffnError) as caught:
        import_model(path, folder / "out", images=2, **QUIET)
    assert not (folder / "out" / "model.fp32.onnx").exists()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_several_inputs_are_refused(tmp_path):
    second = helper.make_tensor_value_info("mask_prior", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    first = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    model = derm3_graph(inputs=[first, second])
    assert "2 inputs ('pixels', 'mask_prior')" in _import_error(tmp_path, model)


def test_a_non_image_output_is_refused(tmp_path):
    pooled = helper.make_node("GlobalAveragePool", ["scores"], ["pooled"], name="pool")
    flat = helper.make_node("Flatten", ["pooled"], ["classes"], name="flatten")
    output = helper.make_tensor_value_info("classes", TensorProto.FLOAT, ["N", 3])
    message = _import_error(tmp_path, derm3_graph(outputs=[output], extra_nodes=[pooled, flat]))
    assert "output 'classes'" in message and "not an N x C x H x W" in message


def test_custom_domain_and_unsupported_ops_name_the_node(tmp_path):
    custom = helper.make_node("AcmeGelu", ["scores"], ["out"], name="my_gelu", domain="com.acme")
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    model = derm3_graph(outputs=[output], extra_nodes=[custom])
    model.opset_import.append(helper.make_opsetid("com.acme", 1))
    message = _import_error(tmp_path / "custom", model)  # TensorRT's parser, else the built-in op table
    assert "node 'my_gelu' (AcmeGelu): " in message
    assert "Plugin not found" in message or "custom domain 'com.acme'" in message
    refused = helper.make_node("Det", ["scores"], ["out"], name="determinant")
    message = _import_error(tmp_path / "det", derm3_graph(outputs=[output], extra_nodes=[refused]))
    assert "node 'determinant' (Det): " in message
    assert "UNSUPPORTED_NODE (checkDet)" in message or "not supported by TensorRT's ONNX parser" in message


def test_batch_one_only_and_low_resolution_outputs_are_refused(tmp_path):
    shape = numpy_helper.from_array(np.array([1, 3, SIZE, SIZE], np.int64), "fixed_shape")
    reshape = helper.make_node("Reshape", ["scores", "fixed_shape"], ["out"], name="batch_one")
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    model = derm3_graph(outputs=[output], extra_nodes=[reshape])
    model.graph.initializer.append(shape)
    assert "does not run on a batch of 2 32x32 images" in _import_error(tmp_path / "batch", model)
    pool = helper.make_node("MaxPool", ["scores"], ["out"], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    half = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, SIZE // 2, SIZE // 2])
    message = _import_error(tmp_path / "half", derm3_graph(outputs=[half], extra_nodes=[pool]))
    assert "output 'out'" in message and "full-resolution" in message


@pytest.mark.parametrize("edit, field", [
    (("classes = 3", "classes = 4"), "output.classes says 4"),
    (("size = 32", "size = 64"), "64x64 (input.size)"),
    (('name = "prior_conv"', 'name = "nothing_*"'), "precision.keep_fp32[0] (name 'nothing_*') matches no node"),
])
def test_contract_that_contradicts_the_model(tmp_path, edit, field):
    assert field in _import_error(tmp_path, contract=ONNX_CONTRACT.replace(*edit))


@pytest.mark.parametrize("edit, field", [
    (("[source]", "[sauce]"), "unknown field 'sauce'"),
    (('onnx = "derm3.onnx"', 'onnx = "missing.onnx"'), "source.onnx: missing.onnx not found"),
    (('onnx = "derm3.onnx"', 'factory = "acme:build"'), "source.weights: missing"),
    (('onnx = "derm3.onnx"', 'factory = "not a factory"'), "source.factory 'not a factory'"),
    (('channels = "BGR"', 'channels = "RGBA"'), "input.channels 'RGBA'"),
    (("size = 32", "size = 30"), "input.size 30 is not a positive multiple of 8"),
    (("scale = 255", "scale = 100"), "input.scale 100"),
    (("lesion_class = 2", "lesion_class = 3"), "output.lesion_class 3"),
    (('values = "probabilities"', 'values = "masks"'), "output.values 'masks'"),
    (('precisions = ["int8"]', 'precisions = ["bf16"]'), "precision.keep_fp32[0].precisions"),
    (("std = [57.375, 57.12, 58.395]", "std = [1, 2]"), "input.std must be 3 numbers"),
    (("std = [57.375, 57.12, 58.395]", "std = [57.375, inf, 58.395]"), "input.std is inf, not a finite number"),
    (("mean = [103.53, 116.28, 123.675]", "mean = [nan, 116.28, 123.675]"), "input.mean is nan, not a finite number"),
    (("size = 32", "size = 8192"), "input.size 8192 is above 2048"),  # refused before anything is allocated
    (('onnx = "derm3.onnx"', 'onnx = "."'), "source.onnx '.' is a folder"),
])
def test_contract_fields_are_validated_in_one_line(tmp_path, edit, field):
    (tmp_path / "derm3.onnx").write_bytes(b"")
    (tmp_path / "c.toml").write_text(ONNX_CONTRACT.replace(*edit))
    with pytest.raises(UlffnError, match="^" + str(tmp_path / "c.toml").replace("\\", "\\\\")) as caught:
        load_contract(tmp_path / "c.toml")
    assert field in str(caught.value) and "\n" not in str(caught.value)


def test_factory_and_weights_problems_are_one_line(tmp_path):
    contract = write_unet(tmp_path)
    bad_import = UNET_CONTRACT.replace("acme_models.unet:build", "acme_models.unet:missing")
    contract.write_text(bad_import)
    with pytest.raises(UlffnError, match="source.factory 'acme_models.unet:missing' cannot be imported"):
        import_model(contract, tmp_path / "out", trust_code=True, **QUIET)
    contract.write_text(UNET_CONTRACT.replace("width = 8", "width = 16"))
    with pytest.raises(UlffnError, match="source.weights: unet.pt does not fit the factory's model"):
        import_model(contract, tmp_path / "out", trust_code=True, **QUIET)


def test_cli_error_is_one_line_with_exit_2(tmp_path):
    write_derm3(tmp_path, contract=ONNX_CONTRACT.replace("classes = 3", "classes = 5"))
    result = run_cli("import-model", str(tmp_path / "derm3.toml"), "-o", str(tmp_path / "out"))
    assert_one_line_error(result, 2, "output.classes says 5")


# -- hostile or odd contracts and sources (issue 18) -------------------------------------------------------

def test_a_factory_runs_no_code_without_trust_code(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "w.pt").write_bytes(b"weights")
    (tmp_path / "evil.toml").write_text(UNET_CONTRACT.split("[source]")[0] + f"""
[source]
factory = "os:system"
weights = "w.pt"
args = {{ command = "touch {marker}" }}

[input]
size = 32

[output]
activation = "sigmoid"
""")
    result = run_cli("import-model", tmp_path / "evil.toml", "-o", tmp_path / "out")
    assert_one_line_error(result, 2, "source.factory 'os:system' is Python code", "--trust-code")
    assert "imports Python module 'os'" in result.stdout and "system(command=" in result.stdout
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_import_model_refuses_to_overwrite_its_own_source(tmp_path):
    out = tmp_path / "out"
    write_derm3(tmp_path, contract=ONNX_CONTRACT.replace('onnx = "derm3.onnx"', 'onnx = "out/model.fp32.onnx"'))
    out.mkdir()
    (tmp_path / "derm3.onnx").rename(out / "model.fp32.onnx")
    before = (out / "model.fp32.onnx").read_bytes()
    with pytest.raises(UlffnError, match="the source model is one of the files import-model writes"):
        import_model(tmp_path / "derm3.toml", out, images=2, **QUIET)
    assert (out / "model.fp32.onnx").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["model.fp32.onnx"]


def test_an_imported_model_can_be_imported_again(tmp_path):
    first = import_model(write_derm3(tmp_path / "a"), tmp_path / "a" / "out", images=2, **QUIET)
    again = ONNX_CONTRACT.replace('onnx = "derm3.onnx"', 'onnx = "out/model.fp32.onnx"').replace('"BGR"', '"RGB"')
    again = again.replace("classes = 3", "classes = 2").replace("lesion_class = 2", "lesion_class = 1")
    (tmp_path / "a" / "again.toml").write_text(again)
    second = import_model(tmp_path / "a" / "again.toml", tmp_path / "b", images=2, **QUIET)
    assert not second.failed and set(second.paths) == {"fp32", "fp16"}
    batch = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with Segmenter.load(first.paths["fp32"]) as one, Segmenter.load(second.paths["fp32"]) as two:
        np.testing.assert_allclose(two.infer(batch), one.infer(batch), atol=1e-5)


def _external_data_onnx(folder, problem: str):
    """derm3 with its weights in derm3.onnx.data; ``problem``: that file is missing, or the model names a
    file outside its folder."""
    folder.mkdir(parents=True)
    onnx.save(derm3_graph(), str(folder / "derm3.onnx"), save_as_external_data=True, location="derm3.onnx.data",
              size_threshold=256)
    if problem == "missing":
        (folder / "derm3.onnx.data").unlink()
    else:
        model = onnx.load(str(folder / "derm3.onnx"), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../outside/derm3.onnx.data"
        onnx.save(model, str(folder / "derm3.onnx"))
    (folder / "derm3.toml").write_text(ONNX_CONTRACT)
    return folder / "derm3.onnx"


@pytest.mark.parametrize("problem", ["missing", "escaping"])
@pytest.mark.parametrize("command", ["import-model", "lint-onnx", "calibrate"])
def test_missing_or_escaping_external_data_is_one_line_exit_2(tmp_path, problem, command):
    model = _external_data_onnx(tmp_path / "m", problem)
    args = {"import-model": [model.with_suffix(".toml"), "-o", tmp_path / "out"], "lint-onnx": [model],
            "calibrate": [model, "--data", tmp_path]}[command]
    assert_one_line_error(run_cli(command, *args), 2, "external data is missing or outside its folder")


def test_an_onnx_runtime_build_does_not_depend_on_the_sources_data_file(imported, tmp_path):
    from ulffn_deploy.targets.onnxruntime_build import build_ort_model

    _, out = imported
    onnx.save(onnx.load(str(out / "model.fp32.onnx")), str(tmp_path / "model.fp32.onnx"), save_as_external_data=True,
              location="model.fp32.onnx.data", size_threshold=256)
    built = build_ort_model(tmp_path / "model.fp32.onnx")
    batch = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    with Segmenter.load(built) as segmenter:
        expected = segmenter.infer(batch)
    (tmp_path / "model.fp32.onnx.data").unlink()  # the source moves away: the artifact must not notice
    with Segmenter.load(built) as segmenter:
        np.testing.assert_array_equal(segmenter.infer(batch), expected)


# -- ULFFN's rules are data too ----------------------------------------------------------------------------

def test_contract_module_imports_nothing_heavy():
    result = run_python(textwrap.dedent("""
        from ulffn_deploy.contract import load_contract
        from ulffn_deploy.keep_fp32 import ULFFN_KEEP_FP32
        print(len(ULFFN_KEEP_FP32))
    """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(ULFFN_KEEP_FP32)) and result.imported == []


def test_ulffn_rules_match_its_cam_input_unit_head_and_softmax():
    from tiny_models import tiny_onnx

    graph = onnx.load(str(tiny_onnx("fp32"))).graph
    int8 = keep_fp32_nodes(graph, ULFFN_KEEP_FP32, "int8")
    fp16 = keep_fp32_nodes(graph, ULFFN_KEEP_FP32, "fp16")
    assert {reason.split(":")[0] for reason in int8.values()} == {"CAM", "input unit", "head", "softmax"}
    cam16 = {name for name, reason in fp16.items() if reason.startswith("CAM")}
    cam8 = {name for name, reason in int8.items() if reason.startswith("CAM")}
    assert cam16 < cam8  # FP16 keeps the CAM up to its Sigmoid; its gating (Mul, Add) runs in FP16
    assert {n.op_type for n in graph.node if n.name in cam8 - cam16} <= {"Mul", "Add"}
    assert any(n.op_type == "Sigmoid" and n.name in cam16 for n in graph.node)


def test_the_readme_contract_is_complete_and_valid(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    text = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "acme-unet.toml").write_text(text)
    (tmp_path / "acme_unet.onnx").write_bytes(b"")
    contract = load_contract(tmp_path / "acme-unet.toml")
    assert (contract.name, contract.input.channels, contract.output.lesion_class) == ("acme-unet", "BGR", 2)
    assert len(contract.keep_fp32) == 2 and contract.keep_fp32[1].precisions == ("int8",)
    assert contract.input.normalization().mean == pytest.approx((123.675 / 255, 116.28 / 255, 103.53 / 255))


def test_dynamic_height_and_width(tmp_path):
    import onnxruntime

    contract = write_unet(tmp_path)
    contract.write_text(UNET_CONTRACT.replace("size = 32\n", "size = 32\ndynamic = [16, 64]\n"))
    result = import_model(contract, tmp_path / "out", images=2, trust_code=True, **QUIET)
    session = onnxruntime.InferenceSession(str(result.paths["fp16"]), providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape[2:]] == ["height", "width"]
    (output,) = session.run(None, {"image": np.zeros((1, 3, 48, 64), np.float32)})
    assert output.shape == (1, 2, 48, 64)
    assert json.loads(read_metadata(result.paths["fp32"]).extra["model_contract"])["input"]["dynamic"] == [16, 64]


def test_a_kept_node_that_ends_the_model_stays_fp32(tmp_path):
    """A rule on the model's last node (here its own Sigmoid): the FP16 converter cannot block a node that
    feeds a graph output, so such nodes are made FP32 after conversion."""
    take = helper.make_node("Slice", ["scores", "start", "end", "axis"], ["lesion"], name="take")
    sigmoid = helper.make_node("Sigmoid", ["lesion"], ["p"], name="final_sigmoid")
    model = derm3_graph(outputs=[helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
                        extra_nodes=[take, sigmoid])
    for name, value in (("start", 2), ("end", 3), ("axis", 1)):
        model.graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
    contract = ONNX_CONTRACT.replace('activation = "softmax"\nclasses = 3\nlesion_class = 2', 'activation = "sigmoid"')
    path = write_derm3(tmp_path, model, contract + '\n[[precision.keep_fp32]]\nop = "Sigmoid"\nprecisions = ["fp16"]\n')
    result = import_model(path, tmp_path / "out", images=2, **QUIET)
    fp16 = onnx.load(str(result.paths["fp16"]))
    made_by = {out: node for node in fp16.graph.node for out in node.output}
    (node,) = [n for n in fp16.graph.node if n.name == "final_sigmoid"]
    cast = made_by[node.input[0]]
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT


def test_verify_refuses_a_reference_of_another_model(tmp_path, data):
    from ulffn_deploy.verify import verify_artifact

    first = import_model(write_derm3(tmp_path / "a"), tmp_path / "a" / "out", images=2, **QUIET)
    other = derm3_graph()
    other.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array([0.0, -1.0, 0.5], np.float32), "prior_b"))
    second = import_model(write_derm3(tmp_path / "b", other), tmp_path / "b" / "out", images=2, **QUIET)
    with pytest.raises(UlffnError, match="made from a different checkpoint"):
        verify_artifact(second.paths["fp16"], first.paths["fp32"], data, schedule=FAST, record=False)


def test_model_tensors_named_like_the_toolkits_are_renamed(tmp_path):
    model = derm3_graph()
    for node in model.graph.node:  # an internal tensor "image", the output "probabilities"
        node.input[:] = [{"body": "image", "scores": "probabilities"}.get(n, n) for n in node.input]
        node.output[:] = [{"body": "image", "scores": "probabilities"}.get(n, n) for n in node.output]
    model.graph.output[0].name = "probabilities"
    result = import_model(write_derm3(tmp_path, model), tmp_path / "out", images=2, **QUIET)
    graph = onnx.load(str(result.paths["fp32"])).graph
    assert [v.name for v in graph.input] == ["image"] and [v.name for v in graph.output] == ["probabilities"]
    assert sum("probabilities" in node.output for node in graph.node) == 1


def test_softmax_logits_get_their_softmax_in_the_head(tmp_path):
    model = derm3_graph(outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])])
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    model.graph.node.remove(softmax)
    contract = ONNX_CONTRACT.replace('values = "probabilities"', 'values = "logits"')
    result = import_model(write_derm3(tmp_path, model, contract), tmp_path / "out", images=2, **QUIET)
    assert result.comparisons["fp32"].max_abs_diff < 1e-5
    fp16 = onnx.load(str(result.paths["fp16"]))
    head = [node.op_type for node in fp16.graph.node if node.name.startswith("toolkit_head/")]
    assert head == ["Gather", "Softmax", "Slice", "Sub", "Concat"]  # the BGR flip, then the head in FP32
    made_by = {out: node for node in fp16.graph.node for out in node.output}
    softmax = next(node for node in fp16.graph.node if node.name == "toolkit_head/Softmax")
    assert made_by[softmax.input[0]].op_type == "Cast"  # reads the FP16 body's output cast back to FP32


def test_a_precision_that_fails_its_checks_is_not_written(tmp_path, monkeypatch):
    from ulffn_deploy.export import import_model as module

    def flipped_prior(body, keep):  # an "FP16" graph that segments the skin instead of the lesion
        changed = onnx.ModelProto()
        changed.CopyFrom(body)
        prior = next(init for init in changed.graph.initializer if init.name == "prior_w")
        prior.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(prior), "prior_w"))
        return changed

    monkeypatch.setattr(module, "convert_to_fp16", flipped_prior)
    path = write_derm3(tmp_path)
    result = CliRunner().invoke(cli, ["import-model", str(path), "-o", str(tmp_path / "out"), "--images", "2"])
    assert result.exit_code == 1
    assert "FP16 failed its checks against the source model" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.fp32.onnx"]
