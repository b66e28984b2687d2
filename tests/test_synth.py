"""The synthetic dermoscopy generator: determinism, ISIC layout, sane masks, atomic output, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, run_cli, run_python
from PIL import Image

from ulffn_deploy import synth
from ulffn_deploy.cli import cli
from ulffn_deploy.data import FOLDERS, IsicSegmentation
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import sha256_file
from ulffn_deploy.synth import default_test_count, generate_dataset, render_sample


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(out, n_train=4, n_test=2, size=48, seed=5)
    return out


def test_same_seed_gives_identical_bytes_and_another_seed_differs(small_set, tmp_path):
    generate_dataset(tmp_path / "again", 4, 2, 48, seed=5)
    generate_dataset(tmp_path / "other", 4, 2, 48, seed=6)
    reference = _digests(small_set)
    assert len(reference) == 2 * 6 + 1  # images, masks, synth.json
    assert _digests(tmp_path / "again") == reference
    other = _digests(tmp_path / "other")
    assert other.keys() == reference.keys()
    assert sum(other[name] != reference[name] for name in reference if name.endswith(".jpg")) == 6


def test_layout_is_readable_as_isic_2016(small_set):
    train = IsicSegmentation(small_set, 2016, "train")
    test = IsicSegmentation(small_set, 2016, "test")
    assert train.ids == [f"ISIC_{k:07d}" for k in range(4)] and test.ids == ["ISIC_0000004", "ISIC_0000005"]
    assert train.image_dir.name == FOLDERS[(2016, "train")][0] and test.mask_dir.name == FOLDERS[(2016, "test")][1]
    for dataset in (train, test):
        for i, sample in enumerate(dataset):
            assert Image.open(sample.image_path).format == "JPEG"
            assert sample.mask_path.name == f"{sample.isic_id}_Segmentation.png"
            raw = Image.open(sample.mask_path)
            assert raw.mode == "L" and set(np.unique(np.asarray(raw)).tolist()) <= {0, 255}
            image, mask = dataset.load(i)
            height, width = mask.shape
            assert height == 48 and 1.25 * 48 - 1 <= width <= 1.55 * 48 + 1
            assert image.shape == (height, width, 3)


def test_masks_are_non_trivial_and_some_lesions_touch_the_border():
    fractions, touching = [], []
    for k in range(40):
        image, mask = render_sample(np.random.default_rng([0, k]), 40)
        assert image.dtype == np.uint8 and image.shape[:2] == mask.shape and mask.dtype == np.bool_
        fractions.append(mask.mean())
        touching.append(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    assert 0.01 <= min(fractions) and max(fractions) <= 0.85
    assert 0.1 <= np.mean(fractions) <= 0.45
    assert 2 <= sum(touching) <= 30


def test_lesions_are_darker_than_the_skin_around_them():
    contrasts = []
    for k in range(20):
        image, mask = render_sample(np.random.default_rng([1, k]), 64)
        gray = image.astype(np.float64).mean(axis=2)
        bright = gray > 30  # leave out the black field-of-view corners
        contrasts.append(gray[~mask & bright].mean() - gray[mask].mean())
    assert np.median(contrasts) > 30
    assert min(contrasts) > 5


def test_default_test_count():
    assert [default_test_count(n) for n in (1, 2, 3, 10, 200, 900)] == [1, 1, 1, 2, 40, 180]


def test_default_test_split_is_written(tmp_path):
    summary = generate_dataset(tmp_path / "d", 3, None, 32, seed=0)
    assert summary["n_test"] == 1 and len(IsicSegmentation(tmp_path / "d", 2016, "test")) == 1


def test_force_replaces_an_earlier_synth_output_only(tmp_path):
    out = tmp_path / "d"
    generate_dataset(out, 2, 1, 32, seed=0)
    with pytest.raises(UlffnError, match="exists and is not empty"):
        generate_dataset(out, 1, 1, 32, seed=0)
    generate_dataset(out, 1, 1, 32, seed=0, force=True)
    assert len(IsicSegmentation(out, 2016, "train")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folders left behind


def test_force_never_deletes_a_folder_synth_did_not_write(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UlffnError, match="holds no synth.json"):
        generate_dataset(tmp_path, 1, 1, 32, seed=0, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_an_empty_existing_folder_is_filled(tmp_path):
    (tmp_path / "d").mkdir()
    generate_dataset(tmp_path / "d", 1, 1, 32, seed=0)
    assert (tmp_path / "d" / "synth.json").is_file()


def test_an_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(rng, size):
        calls.append(size)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return render_sample(rng, size)

    monkeypatch.setattr(synth, "render_sample", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_dataset(tmp_path / "d", 3, 1, 32, seed=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("n_train", "n_test", "size", "message"), [
    (0, 1, 64, r"\(--n\) must be at least 1"), (2, -1, 64, r"\(--split-test\) must be 0 or more"),
    (2, 1, 31, r"\(--size\) must be from 32"), (2, 1, 5000, r"\(--size\) must be from 32"),
])
def test_bad_arguments(tmp_path, n_train, n_test, size, message):
    with pytest.raises(UlffnError, match=message):
        generate_dataset(tmp_path / "d", n_train, n_test, size, seed=0)
    assert not (tmp_path / "d").exists()


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "d").write_text("x")
    with pytest.raises(UlffnError, match="is not a folder"):
        generate_dataset(tmp_path / "d", 1, 1, 32, seed=0)


def test_cli_synth(tmp_path):
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "d"), "--n", "2", "--size", "32", "--seed", "1",
                                      "--split-test", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 training and 1 test images" in result.output
    assert len(IsicSegmentation(tmp_path / "d", 2016, "train")) == 2


@pytest.mark.parametrize("args", [["--n", "0"], ["--size", "16"], ["--n", "x"]])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, args):
    result = run_cli("synth", str(tmp_path / "d"), *args)
    assert_one_line_error(result, 2)
    assert not (tmp_path / "d").exists()


def test_cli_refuses_a_file_as_output(tmp_path):
    (tmp_path / "d").write_text("x")
    result = run_cli("synth", str(tmp_path / "d"), "--n", "1", "--size", "32")
    assert result.returncode == 2 and "is not a folder" in result.stderr


def test_generator_and_loader_import_no_heavy_package(tmp_path):
    result = run_python(f"""
        from ulffn_deploy.synth import generate_dataset
        from ulffn_deploy.data import IsicSegmentation
        generate_dataset({str(tmp_path / "d")!r}, 1, 1, 32, seed=0)
        image, mask = IsicSegmentation({str(tmp_path / "d")!r}, 2016, "test").load(0)
        print(image.shape[0], mask.any())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["32", "True"] and result.heavy == []


def test_preview_grid_draws_green_outlines():
    grid = np.asarray(synth.preview_grid(seed=0, size=32, columns=2, rows=1))
    assert grid.shape[0] == 32 + 2 * 6
    assert ((grid[..., 1] == 230) & (grid[..., 0] == 0) & (grid[..., 2] == 0)).sum() > 20
