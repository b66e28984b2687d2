"""Two gloo processes started by torch.distributed.run train the same weights as one process.

The optimizer here is SGD: Adam's first steps divide each gradient by its own magnitude, so gradient
differences at float rounding level (1e-7) flip the sign of near-zero components and move those weights
by a whole learning rate; SGD shows whether the gradients themselves agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli

torch = pytest.importorskip("torch")

from ulffn_deploy.checkpoint import load_checkpoint  # noqa: E402
from ulffn_deploy.synth import generate_dataset  # noqa: E402
from ulffn_deploy.train.trainer import train  # noqa: E402

OPTIONS = {"preset": "cpu-demo", "width": 8, "size": 32, "batch_size": 4, "val_count": 4, "epochs": 1,
           "optimizer": "sgd", "lr": 0.05, "workers": 0, "quiet": True, "device": "cpu"}


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one(tmp_path: Path) -> None:
    data = tmp_path / "isic"
    generate_dataset(data, n_train=12, n_test=0, size=40, seed=0)  # 8 training images: 2 steps of 4
    train({"data": str(data), "out": str(tmp_path / "one"), **OPTIONS})

    argv = ["train", "--data", str(data), "--out", str(tmp_path / "two"), "--nproc", "2"]
    for key, value in OPTIONS.items():
        option = "--" + key.replace("_", "-")
        argv += [option] if value is True else [option, str(value)]
    result = run_cli(*argv, timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]

    one = load_checkpoint(tmp_path / "one" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "last.pt")
    assert two["world_size"] == 2 and one["world_size"] == 1 and two["global_step"] == one["global_step"] == 2
    for key, value in one["state_dict"].items():  # weights and synchronised BatchNorm statistics
        torch.testing.assert_close(two["state_dict"][key], value, atol=1e-5, rtol=1e-4, msg=key)
    for metric in ("train_loss", "val_loss", "dice", "jaccard"):
        assert two["history"][0][metric] == pytest.approx(one["history"][0][metric], abs=1e-5), metric
