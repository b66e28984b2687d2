"""Evaluation of a checkpoint on an ISIC split, under the paper (crop) and full-image protocols."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from ulffn_deploy.checkpoint import save_checkpoint  # noqa: E402
from ulffn_deploy.cli import cli  # noqa: E402
from ulffn_deploy.config import ModelConfig, Normalization  # noqa: E402
from ulffn_deploy.data import IsicSegmentation  # noqa: E402
from ulffn_deploy.errors import UlffnError  # noqa: E402
from ulffn_deploy.metrics import METRICS  # noqa: E402
from ulffn_deploy.model import build_model  # noqa: E402
from ulffn_deploy.preprocess import DEFAULT_FIT_MODE, fit_mask, placement_for  # noqa: E402
from ulffn_deploy.synth import generate_dataset  # noqa: E402
from ulffn_deploy.train.dataset import SkippedSampleWarning  # noqa: E402
from ulffn_deploy.train.evaluate import evaluate_checkpoint  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "isic"
    generate_dataset(out, n_train=2, n_test=5, size=48, seed=3)
    return out


@pytest.fixture(scope="module")
def everything_is_lesion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint whose head says 'lesion' for every pixel, so every metric follows from the labels alone."""
    model = build_model(ModelConfig("w-ac", 8))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-5.0, 5.0]))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {"kind": "best", "model_config": model.config.to_dict(), "input_size": SIZE,
                           "normalization": Normalization().to_dict(), "fit_mode": "paper",
                           "state_dict": model.state_dict()})
    return path


def _lesion_fractions(data: Path, crop: bool) -> list[float]:
    masks = [IsicSegmentation(data, split="test").load(i)[1] for i in range(5)]
    if crop:
        masks = [fit_mask(m, placement_for(*m.shape, SIZE, "paper")) for m in masks]
    return [float(m.mean()) for m in masks]


@pytest.mark.parametrize("fit_mode", ["paper", "full"])
def test_metrics_follow_the_protocol(data: Path, everything_is_lesion: Path, fit_mode: str) -> None:
    result = evaluate_checkpoint(everything_is_lesion, data, split="test", fit_mode=fit_mode, batch_size=2)
    assert result["images"] == 5 and result["skipped"] == [] and set(result["metrics"]) == set(METRICS)
    assert result["protocol"].startswith(f"fit {fit_mode}") and "original image size" in result["protocol"]
    # the paper's protocol (on the crops) in fit mode paper; at the original size in both modes
    on_crops, whole = result["paper_metrics"], result["metrics"]
    if fit_mode == "full":
        assert on_crops is None
        assert whole["accuracy"] == pytest.approx(np.mean(_lesion_fractions(data, crop=False)), abs=1e-6)
        assert whole["sensitivity"] == 1.0 and whole["specificity"] == 0.0
    else:
        assert on_crops["accuracy"] == pytest.approx(np.mean(_lesion_fractions(data, crop=True)), abs=1e-6)
        assert on_crops["jaccard"] == pytest.approx(np.mean(_lesion_fractions(data, crop=True)), abs=1e-6)
        assert on_crops["sensitivity"] == 1.0 and on_crops["specificity"] == 0.0
        assert whole["specificity"] > 0.0  # outside the crop is background at the original size


def test_unreadable_images_are_skipped_and_listed(data: Path, everything_is_lesion: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "isic"
    shutil.copytree(data, copy)
    broken = sorted((copy / "ISBI2016_ISIC_Part1_Test_Data").glob("*.jpg"))[1]
    broken.write_bytes(b"\xff\xd8 broken")
    with pytest.warns(SkippedSampleWarning, match=broken.stem):
        result = evaluate_checkpoint(everything_is_lesion, copy)
    assert result["images"] == 4 and result["skipped"] == [broken.stem]


def test_bad_arguments(data: Path, everything_is_lesion: Path, tmp_path: Path) -> None:
    with pytest.raises(UlffnError, match="unknown fit mode"):
        evaluate_checkpoint(everything_is_lesion, data, fit_mode="crop")
    with pytest.raises(UlffnError, match="no ISIC 2016 test images"):
        evaluate_checkpoint(everything_is_lesion, tmp_path)
    with pytest.raises(UlffnError, match="no such checkpoint"):
        evaluate_checkpoint(tmp_path / "none.pt", data)


def test_cli_prints_the_table_and_json(data: Path, everything_is_lesion: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["evaluate", str(everything_is_lesion), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "protocol: fit full" in result.output and "on ISIC 2016 test: 5 images" in result.output
    assert "| | Accuracy | Dice | JSI | Sensitivity | Specificity | Thresholded JSI |" in result.output
    assert "w=8, fit full |" in result.output and "paper protocol" not in result.output
    result = runner.invoke(cli, ["evaluate", str(everything_is_lesion), "--data", str(data), "--fit", "paper"])
    assert "w=8, fit paper |" in result.output and "w=8, paper protocol (crops) |" in result.output
    result = runner.invoke(cli, ["evaluate", str(everything_is_lesion), "--data", str(data), "--json"])
    parsed = json.loads(result.output)
    assert parsed["fit_mode"] == "full" and parsed["metrics"]["sensitivity"] == 1.0


def test_every_command_defaults_to_the_same_fit_mode() -> None:
    from ulffn_deploy.commands import evaluate, predict, verify

    for command in (evaluate.command, verify.command, predict.command):
        (fit,) = [p for p in command.params if p.name == "fit_mode"]
        assert fit.default == DEFAULT_FIT_MODE, command.name


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cpu-demo ULFFN trained for two epochs at 32 px on synthetic images, exported to ONNX."""
    from ulffn_deploy.export.pipeline import export_checkpoint
    from ulffn_deploy.train import make_config, train

    folder = tmp_path_factory.mktemp("trained")
    generate_dataset(folder / "data", n_train=16, n_test=6, size=48, seed=1)
    train(make_config(str(folder / "data"), str(folder / "run"), preset="cpu-demo", epochs=2, size=SIZE, val_count=2,
                      quiet=True))
    export_checkpoint(folder / "run" / "best.pt", folder, images=2, log=lambda line: None)
    return folder


@pytest.mark.parametrize("fit_mode", ["full", "paper"])
def test_evaluate_verify_and_score_of_predict_agree_on_label_dice(trained: Path, fit_mode: str, tmp_path: Path) -> None:
    from ulffn_deploy.commands.score import score_folders
    from ulffn_deploy.latency import Schedule
    from ulffn_deploy.predict import predict_paths
    from ulffn_deploy.verify import verify_artifact

    checkpoint, onnx_model, data = trained / "run" / "best.pt", trained / "model.fp32.onnx", trained / "data"
    test = IsicSegmentation(data, 2016, "test")
    evaluated = evaluate_checkpoint(checkpoint, data, fit_mode=fit_mode)["metrics"]["dice"]
    verified = verify_artifact(onnx_model, checkpoint, data, fit_mode=fit_mode, record=False,
                               schedule=Schedule(warmup_iterations=0, iterations=1, duration_s=0.0))
    predict_paths(onnx_model, [test.image_dir], tmp_path, fit_mode=fit_mode, progress=False)
    scored = score_folders(tmp_path, test.mask_dir)
    assert scored["images"] == verified["data"]["num_images"] == 6
    dice = [evaluated, verified["comparison"]["metrics"]["candidate"]["dice"], scored["mean"]["dice"]]
    assert max(dice) - min(dice) <= 0.005, dice
    assert 0.05 < dice[0] < 1.0  # a model that segments something, scored on real boundaries
