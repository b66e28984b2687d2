"""The quickstart pipeline end to end (one training epoch), as `ulffn-deploy quickstart` runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from ulffn_deploy.quickstart import Quickstart


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_can_run_again(tmp_path: Path) -> None:
    lines: list[str] = []
    quickstart = Quickstart(tmp_path, log=lines.append, epochs=1)
    summary = quickstart.run()

    assert list(summary["seconds"]) == ["synth", "train", "evaluate", "export", "calibrate", "build", "predict", "verify"]
    for name in ("run/best.pt", "model.fp32.onnx", "model.fp16.onnx", "model.int8.onnx", "predictions/predictions.csv"):
        assert (tmp_path / name).is_file(), name
    assert Path(summary["build"]["artifact"]).is_file()
    assert summary["verify"]["passed"]
    assert len(list((tmp_path / "predictions").glob("*_overlay.png"))) == 4
    text = "\n".join(lines)
    assert "| int8 |" in text and "Result: PASS" in text and "ulffn-deploy benchmark" in text

    # the quickstart model gets one label Dice from evaluate, verify (FP32 ONNX) and score on predict's output
    from ulffn_deploy.commands.score import score_folders
    from ulffn_deploy.data import IsicSegmentation
    from ulffn_deploy.latency import Schedule
    from ulffn_deploy.predict import predict_paths
    from ulffn_deploy.train import evaluate_checkpoint
    from ulffn_deploy.verify import verify_artifact

    checkpoint, data = tmp_path / "run" / "best.pt", tmp_path / "data"
    test = IsicSegmentation(data, 2016, "test")
    evaluated = evaluate_checkpoint(checkpoint, data, fit_mode="full")["metrics"]["dice"]
    verified = verify_artifact(tmp_path / "model.fp32.onnx", checkpoint, data, fit_mode="full", record=False,
                               schedule=Schedule(warmup_iterations=0, iterations=1, duration_s=0.0))
    predict_paths(tmp_path / "model.fp32.onnx", [test.image_dir], tmp_path / "scored", fit_mode="full", progress=False)
    scored = score_folders(tmp_path / "scored", test.mask_dir)["mean"]["dice"]
    dice = [evaluated, verified["comparison"]["metrics"]["candidate"]["dice"], scored]
    assert max(dice) - min(dice) <= 0.005, dice

    again = quickstart.train({})  # a second quickstart in the same folder starts its run afresh
    assert again["epochs_completed"] == 1 and again["global_step"] == summary["train"]["global_step"]
