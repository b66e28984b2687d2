"""Training: presets, sampler and augmentation, runs in one process, resume, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, run_cli

torch = pytest.importorskip("torch")

from ulffn_deploy.checkpoint import load_checkpoint, load_model  # noqa: E402
from ulffn_deploy.config import Normalization  # noqa: E402
from ulffn_deploy.data import IsicSegmentation  # noqa: E402
from ulffn_deploy.errors import UlffnError  # noqa: E402
from ulffn_deploy.synth import generate_dataset  # noqa: E402
from ulffn_deploy.train.augment import colour_jitter, geometric  # noqa: E402
from ulffn_deploy.train.dataset import (  # noqa: E402
    EpochSampler,
    SegmentationDataset,
    SkippedSampleWarning,
    validation_count,
)
from ulffn_deploy.train.presets import make_config, parse_args, to_argv  # noqa: E402
from ulffn_deploy.train.trainer import train  # noqa: E402

TINY = {"preset": "cpu-demo", "width": 8, "size": 32, "batch_size": 4, "val_count": 4, "workers": 0, "quiet": True}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "isic"
    generate_dataset(out, n_train=12, n_test=4, size=40, seed=0)
    return out


def _run(data: Path, out: Path, **overrides: object) -> dict:
    return train({"data": str(data), "out": str(out), **TINY, **overrides})


def _timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in history]


# ---- configuration ---------------------------------------------------------------------------


def test_paper_preset_is_the_paper_recipe() -> None:
    config = make_config("d", "o")
    assert (config.optimizer, config.lr, config.lr_step, config.lr_gamma) == ("adam", 1e-4, 20, 0.9)
    assert (config.epochs, config.batch_size, config.size, config.width, config.fit_mode) == (100, 8, 512, 64, "paper")
    assert validation_count(900, config.val_count, config.val_fraction) == 200  # 700 / 200 on ISIC 2016
    assert validation_count(160, None, config.val_fraction) == 36
    assert validation_count(160, 10, config.val_fraction) == 10


def test_options_override_the_preset_and_bad_values_name_the_option() -> None:
    config = make_config("d", "o", preset="cpu-demo", lr=0.5, amp=False)
    assert config.lr == 0.5 and config.width == 8 and config.amp is False
    with pytest.raises(UlffnError, match="--size 30"):
        make_config("d", "o", size=30)
    with pytest.raises(UlffnError, match="unknown preset"):
        make_config("d", "o", preset="fast")
    with pytest.raises(UlffnError, match="width"):
        make_config("d", "o", width=12)


def test_argv_round_trip() -> None:
    values = {"data": "d", "out": "o", "preset": "cpu-demo", "lr": 0.01, "amp": False, "augment": True,
              "val_fraction": 0.25, "resume": True, "overwrite": False, "quiet": True}
    parsed = parse_args(to_argv(values))
    assert {k: parsed[k] for k in values} == values
    assert parsed["epochs"] is None  # not given: left to the preset or the stored run


# ---- data ------------------------------------------------------------------------------------


def _global_batches(world: int, n: int = 10, batch: int = 4, epoch: int = 3) -> list[list[int]]:
    local = batch // world
    shards = []
    for rank in range(world):
        sampler = EpochSampler(list(range(n)), world, rank, seed=5)
        sampler.set_epoch(epoch)
        keys = [index for _, index in sampler]
        shards.append([keys[i : i + local] for i in range(0, len(keys) - local + 1, local)])
    steps = min(len(shard) for shard in shards)
    return [sorted(i for shard in shards for i in shard[b]) for b in range(steps)]


def test_global_batches_are_the_same_images_for_any_process_count() -> None:
    one = _global_batches(1)
    assert len(one) == 2 and one == _global_batches(2) == _global_batches(4)
    assert one != _global_batches(1, epoch=4)  # a new order every epoch


def test_sampler_resumes_part_way_into_an_epoch() -> None:
    sampler = EpochSampler(list(range(10)), 2, 1, seed=0)
    sampler.set_epoch(7)
    full = list(sampler)
    sampler.set_start(2)
    assert list(sampler) == full[2:] and len(sampler) == len(full) - 2
    assert all(epoch == 7 for epoch, _ in full)


def test_geometric_augmentation_moves_image_and_mask_together() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mask = image[..., 0] > 127
    outcomes = set()
    for seed in range(24):
        moved_image, moved_mask = geometric(image, mask, np.random.default_rng(seed))
        assert np.array_equal(moved_mask, moved_image[..., 0] > 127)
        outcomes.add(moved_image.tobytes())
    assert len(outcomes) >= 6


def test_colour_jitter_is_mild_and_seeded() -> None:
    image = np.random.default_rng(1).integers(40, 216, (16, 16, 3), dtype=np.uint8)
    first = colour_jitter(image, np.random.default_rng(3))
    assert np.array_equal(first, colour_jitter(image, np.random.default_rng(3)))
    assert first.dtype == np.uint8 and first.shape == image.shape and not np.array_equal(first, image)
    assert abs(float(first.mean()) - float(image.mean())) < 0.25 * float(image.mean())


def test_augmentation_depends_on_sample_and_epoch_only(data: Path) -> None:
    samples = list(IsicSegmentation(data))
    dataset = SegmentationDataset(samples, 32, "paper", Normalization(), augment=True, seed=1)
    image, mask, valid = dataset[(2, 5)]
    again = SegmentationDataset(samples, 32, "paper", Normalization(), augment=True, seed=1)[(2, 5)]
    assert torch.equal(image, again[0]) and torch.equal(mask, again[1]) and bool(valid)
    assert image.shape == (3, 32, 32) and mask.dtype == torch.int64
    assert not torch.equal(image, dataset[(3, 5)][0])


# ---- training runs ---------------------------------------------------------------------------


def test_a_run_writes_checkpoints_metrics_and_a_summary(data: Path, tmp_path: Path) -> None:
    summary = _run(data, tmp_path / "run", epochs=2)
    assert summary["epochs_completed"] == 2 and summary["global_step"] == 4 and not summary["stopped_early"]
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,train_loss,val_loss,accuracy,dice,jaccard") and len(lines) == 3
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 0 and len(last["history"]) == 2
    assert last["split"]["val_ids"] and set(last["split"]["val_ids"]).isdisjoint(last["split"]["train_ids"])
    assert isinstance(last["rng"]["torch"], torch.Tensor) and "optimizer" in last
    model, info = load_model(tmp_path / "run" / "best.pt")
    assert not model.training and info["kind"] == "best" and info["best"]["epoch"] == summary["best_epoch"]
    assert info["train_args"]["width"] == 8 and info["input_size"] == 32 and "optimizer" not in info


def test_resume_after_a_stop_mid_epoch_equals_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    schedule = {"epochs": 3, "lr_step": 1, "lr_gamma": 0.5}
    _run(data, tmp_path / "straight", **schedule)
    stopped = _run(data, tmp_path / "resumed", max_steps=3, **schedule)  # stops in epoch 2, after its first step
    assert stopped["stopped_early"] and load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 1
    train({"data": str(data), "out": str(tmp_path / "resumed"), "resume": True, "quiet": True})  # options from last.pt

    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 3
    assert resumed["optimizer"]["param_groups"][0]["lr"] == straight["optimizer"]["param_groups"][0]["lr"] == 1e-3 / 8 * 3
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert _timeless(resumed["history"]) == _timeless(straight["history"])


def test_an_existing_run_is_not_overwritten_by_accident(data: Path, tmp_path: Path) -> None:
    _run(data, tmp_path / "run", epochs=1)
    with pytest.raises(UlffnError, match="already holds a run"):
        _run(data, tmp_path / "run", epochs=1)
    assert _run(data, tmp_path / "run", epochs=1, overwrite=True)["epochs_completed"] == 1
    with pytest.raises(UlffnError, match=r"holds no last\.pt"):
        _run(data, tmp_path / "other", resume=True)


def test_a_corrupt_image_is_skipped_with_a_warning_and_the_run_goes_on(data: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "isic"
    shutil.copytree(data, copy)
    broken = next((copy / "ISBI2016_ISIC_Part1_Training_Data").glob("*.jpg"))
    broken.write_bytes(b"not a jpeg")
    with pytest.warns(SkippedSampleWarning, match=broken.stem):
        summary = _run(copy, tmp_path / "run", epochs=1)
    assert summary["epochs_completed"] == 1 and (tmp_path / "run" / "best.pt").is_file()


def test_batch_that_does_not_split_across_processes(data: Path, tmp_path: Path) -> None:
    from ulffn_deploy.train.trainer import preflight

    with pytest.raises(UlffnError, match="does not split evenly across 3 processes"):
        preflight(make_config(str(data), str(tmp_path / "run"), **{**TINY, "batch_size": 4}), 3)
    with pytest.raises(UlffnError, match="fewer than the global batch size 16"):
        preflight(make_config(str(data), str(tmp_path / "run"), **{**TINY, "batch_size": 16}), 1)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_bad_data_folder_is_one_line(tmp_path: Path, make: str) -> None:
    folder = tmp_path / "data"
    if make == "empty":
        folder.mkdir()
    result = run_cli("train", "--data", folder, "--out", tmp_path / "run", "--preset", "cpu-demo", timeout=120)
    assert assert_one_line_error(result, 2).startswith("error: no ISIC 2016 train images")
