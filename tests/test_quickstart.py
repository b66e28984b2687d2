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

    again = quickstart.train({})  # a second quickstart in the same folder starts its run afresh
    assert again["epochs_completed"] == 1 and again["global_step"] == summary["train"]["global_step"]
