"""Progress (issue 12, "long silences"): plain periodic lines when piped, a bar on a terminal, silence when quick."""

from __future__ import annotations

import io

import pytest
from helpers import run_cli
from PIL import Image
from tiny_models import sample_images, tiny_onnx

from ulffn_deploy.progress import INTERVAL_ENV, Progress, default_interval, track


def test_piped_progress_prints_plain_lines_without_carriage_returns():
    stream = io.StringIO()
    with Progress(4, "verify", unit="image", stream=stream, interval=0) as progress:
        progress.update(1)
        progress(3)  # a Progress is its own callback
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("verify: 1/4 image(s) (25%)") and "left" in lines[0]
    assert lines[1].startswith("verify: 4/4 image(s) (100%)")
    assert lines[-1].startswith("verify: 4 image(s) in ")


def test_quick_loops_stay_silent_and_disabled_progress_does_nothing():
    stream = io.StringIO()
    assert list(track(range(5), 5, "epoch 1/1", stream=stream, interval=60)) == [0, 1, 2, 3, 4]
    with Progress(3, "x", enabled=False, stream=stream, interval=0) as progress:
        progress.update(3)
    assert stream.getvalue() == ""


def test_terminal_gets_a_bar_that_is_removed_at_the_end():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    for _ in track(range(3), 3, "benchmark", unit="cell", stream=stream):
        pass
    assert "benchmark" in stream.getvalue() and "\r" in stream.getvalue()


def test_unknown_total_and_interval_from_the_environment(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert default_interval() == 0
    with Progress(None, "predict", unit="image", stream=stream) as progress:
        progress.update(2)
    assert stream.getvalue().splitlines()[0].startswith("predict: 2 image(s), ")
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    assert default_interval() == 10.0


def test_predict_logs_progress_lines_when_piped(tmp_path):
    for i, image in enumerate(sample_images(3)):
        Image.fromarray(image).save(tmp_path / f"image_{i}.png")
    proc = run_cli("predict", tiny_onnx("fp32"), tmp_path, "-o", tmp_path / "out", "--batch-size", "1",
                   env={INTERVAL_ENV: "0"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    assert [line.split(" (")[0] for line in proc.stderr.splitlines()[:3]] == [
        "predict: 1/3 image(s)", "predict: 2/3 image(s)", "predict: 3/3 image(s)"]


def test_training_logs_batch_and_validation_progress_when_piped(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from ulffn_deploy.synth import generate_dataset
    from ulffn_deploy.train.trainer import train

    generate_dataset(tmp_path / "isic", n_train=12, n_test=4, size=40, seed=0)
    monkeypatch.setenv(INTERVAL_ENV, "0")
    train({"data": str(tmp_path / "isic"), "out": str(tmp_path / "run"), "preset": "cpu-demo", "width": 8, "size": 32,
           "batch_size": 4, "val_count": 4, "workers": 0, "epochs": 1})
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "epoch 1/1: 1/2 batch(s) (50%)" in err and "epoch 1/1: 2/2 batch(s) (100%)" in err
    assert "validation: 1/1 batch(s) (100%)" in err


def test_a_running_total_advances_the_count():
    stream = io.StringIO()
    with Progress(10, "verify", unit="image", stream=stream, interval=0) as progress:
        for done in (4, 8, 10):
            progress.advance_to(done)
    assert progress.done == 10
    assert [line.split(" (")[0] for line in stream.getvalue().splitlines()[:3]] == [
        "verify: 4/10 image(s)", "verify: 8/10 image(s)", "verify: 10/10 image(s)"]
