"""Evaluation of a checkpoint on an ISIC split, under the paper (crop) and full-image protocols."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from ulffn_deploy.cli import cli  # noqa: E402
from ulffn_deploy.config import ModelConfig, Normalization  # noqa: E402
from ulffn_deploy.data import IsicSegmentation  # noqa: E402
from ulffn_deploy.errors import UlffnError  # noqa: E402
from ulffn_deploy.metrics import METRICS  # noqa: E402
from ulffn_deploy.model import build_model  # noqa: E402
from ulffn_deploy.preprocess import fit_mask, placement_for  # noqa: E402
from ulffn_deploy.synth import generate_dataset  # noqa: E402
from ulffn_deploy.checkpoint import save_checkpoint  # noqa: E402
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
    fractions = _lesion_fractions(data, crop=fit_mode == "paper")
    assert result["images"] == 5 and result["skipped"] == [] and set(result["metrics"]) == set(METRICS)
    assert result["protocol"].startswith(fit_mode)
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean(fractions), abs=1e-6)  # all pixels called lesion
    assert result["metrics"]["jaccard"] == pytest.approx(np.mean(fractions), abs=1e-6)
    assert result["metrics"]["sensitivity"] == 1.0 and result["metrics"]["specificity"] == 0.0


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


def test_cli_prints_the_paper_table_and_json(data: Path, everything_is_lesion: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["evaluate", str(everything_is_lesion), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "protocol: paper" in result.output and "on ISIC 2016 test: 5 images" in result.output
    assert "| | Accuracy | Dice | JSI | Sensitivity | Specificity | Thresholded JSI |" in result.output
    result = runner.invoke(cli, ["evaluate", str(everything_is_lesion), "--data", str(data), "--fit", "full", "--json"])
    parsed = json.loads(result.output)
    assert parsed["fit_mode"] == "full" and parsed["metrics"]["sensitivity"] == 1.0
