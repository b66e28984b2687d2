"""ISIC folder layouts and their quirks, on tiny fixture folders built in tmp_path."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ulffn_deploy.data import FOLDERS, IsicSegmentation, Sample, UnpairedWarning, split_train_val
from ulffn_deploy.errors import UlffnError

TRAIN_2016 = FOLDERS[(2016, "train")]
VAL_2017 = FOLDERS[(2017, "val")]


def _image(folder: Path, number: int, suffix: str = ".jpg") -> None:
    """An image whose size encodes its id (4+n x 6+n), so a wrong pairing fails load()'s size check."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.full((4 + number, 6 + number, 3), 10 * number, dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"ISIC_{number:07d}{suffix}")


def _mask(folder: Path, number: int, suffix: str = "_Segmentation.png") -> None:
    """A mask of the matching size whose first ``number + 1`` pixels are lesion."""
    folder.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((4 + number) * (6 + number), dtype=np.uint8)
    mask[: number + 1] = 255
    Image.fromarray(mask.reshape(4 + number, 6 + number)).save(folder / f"ISIC_{number:07d}{suffix}")


def _pairs(root: Path, folders: tuple[str, str], numbers: list[int], **suffixes: str) -> None:
    shuffled = list(numbers)
    random.Random(1).shuffle(shuffled)
    for n in shuffled:
        _image(root / folders[0], n, suffixes.get("image", ".jpg"))
    random.Random(2).shuffle(shuffled)
    for n in shuffled:
        _mask(root / folders[1], n, suffixes.get("mask", "_Segmentation.png"))


def _check_pairing(dataset: IsicSegmentation, numbers: list[int]) -> None:
    assert [s.isic_id for s in dataset] == [f"ISIC_{n:07d}" for n in sorted(numbers)]
    for i, n in enumerate(sorted(numbers)):
        image, mask = dataset.load(i)
        assert image.shape == (4 + n, 6 + n, 3) and image.dtype == np.uint8
        assert mask.dtype == np.bool_ and mask.sum() == n + 1


def test_2016_train_pairs_by_id_not_by_position(tmp_path):
    numbers = [7, 0, 12, 3, 5]
    _pairs(tmp_path, TRAIN_2016, numbers)
    _image(tmp_path / TRAIN_2016[0], 20)  # an extra image shifts every later position
    with pytest.warns(UnpairedWarning):
        dataset = IsicSegmentation(tmp_path, 2016, "train")
    _check_pairing(dataset, numbers)
    assert dataset.image_dir == tmp_path / TRAIN_2016[0] and dataset.mask_dir == tmp_path / TRAIN_2016[1]
    assert isinstance(dataset[0], Sample) and dataset[1:3] == dataset.samples[1:3]


def test_2017_layout_ignores_superpixels_metadata_and_licence_files(tmp_path, recwarn):
    numbers = [1, 4, 2]
    _pairs(tmp_path, VAL_2017, numbers, mask="_segmentation.png")
    images, masks = tmp_path / VAL_2017[0], tmp_path / VAL_2017[1]
    for n in numbers:
        Image.new("RGB", (3, 3)).save(images / f"ISIC_{n:07d}_superpixels.png")
    (images / "ISIC-2017_Validation_Data_metadata.csv").write_text("image_id,age\nISIC_0000001,50\n")
    (masks / "LICENSE.txt").write_text("licence")
    (masks / "ATTRIBUTION.txt").write_text("attribution")
    dataset = IsicSegmentation(tmp_path, 2017, "val")
    _check_pairing(dataset, numbers)
    assert not dataset.unpaired_images and not dataset.unpaired_masks
    assert not [w for w in recwarn if issubclass(w.category, UnpairedWarning)]


def test_doubly_nested_folders_are_found(tmp_path):
    images, masks = FOLDERS[(2017, "test")]
    _pairs(tmp_path, (f"{images}/{images}", f"{masks}/{masks}"), [3, 8], mask="_segmentation.png")
    dataset = IsicSegmentation(tmp_path, 2017, "test")
    _check_pairing(dataset, [3, 8])
    assert dataset.image_dir.parent.name == dataset.image_dir.name


@pytest.mark.parametrize(("image", "mask"), [(".JPG", "_SEGMENTATION.PNG"), (".png", "_segmentation.png"),
                                             (".jpeg", "_Segmentation.PNG")])
def test_suffixes_match_in_any_case(tmp_path, image, mask):
    _pairs(tmp_path, TRAIN_2016, [2, 9], image=image, mask=mask)
    _check_pairing(IsicSegmentation(tmp_path, 2016, "train"), [2, 9])


def test_unpaired_images_and_masks_are_reported_not_dropped_silently(tmp_path):
    _pairs(tmp_path, TRAIN_2016, [1, 2, 3])
    for n in (10, 11, 12, 13, 14, 15, 16):
        _image(tmp_path / TRAIN_2016[0], n)
    _mask(tmp_path / TRAIN_2016[1], 30)
    with pytest.warns(UnpairedWarning, match="7 images without a mask"):
        dataset = IsicSegmentation(tmp_path, 2016, "train")
    assert len(dataset) == 3
    assert dataset.unpaired_images == tuple(f"ISIC_{n:07d}" for n in range(10, 17))
    assert dataset.unpaired_masks == ("ISIC_0000030",)
    report = dataset.report()
    assert "3 images with masks" in report and "1 masks without an image" in report
    assert "ISIC_0000010" in report and "ISIC_0000030" in report and "(2 more)" in report


def test_nothing_found_names_the_folders_and_suggests_synth(tmp_path):
    with pytest.raises(UlffnError) as info:
        IsicSegmentation(tmp_path, 2016, "test")
    assert FOLDERS[(2016, "test")][0] in info.value.message
    assert "ulffn-deploy synth" in info.value.hint


def test_missing_ground_truth_folder_is_named(tmp_path):
    _image(tmp_path / TRAIN_2016[0], 1)
    with pytest.raises(UlffnError, match=TRAIN_2016[1]):
        IsicSegmentation(tmp_path, 2016, "train")


def test_wrong_year_hints_at_the_sets_that_are_there(tmp_path):
    _pairs(tmp_path, TRAIN_2016, [1])
    with pytest.raises(UlffnError) as info:
        IsicSegmentation(tmp_path, 2017, "train")
    assert "year=2016, split=train" in info.value.hint


def test_empty_image_folder_and_no_common_ids_are_errors(tmp_path):
    (tmp_path / TRAIN_2016[0]).mkdir()
    (tmp_path / TRAIN_2016[0] / "notes.txt").write_text("not an image")
    with pytest.raises(UlffnError, match="no ISIC_xxxxxxx images"):
        IsicSegmentation(tmp_path, 2016, "train")
    _image(tmp_path / TRAIN_2016[0], 1)
    _mask(tmp_path / TRAIN_2016[1], 2)
    with pytest.raises(UlffnError, match="no common ISIC id"):
        IsicSegmentation(tmp_path, 2016, "train")


def test_two_files_for_one_id_is_an_error(tmp_path):
    _pairs(tmp_path, TRAIN_2016, [1])
    _image(tmp_path / TRAIN_2016[0], 1, ".png")
    with pytest.raises(UlffnError, match="two files for ISIC_0000001"):
        IsicSegmentation(tmp_path, 2016, "train")


def test_mask_of_another_size_is_an_error_on_load(tmp_path):
    _pairs(tmp_path, TRAIN_2016, [1])
    Image.new("L", (3, 3)).save(tmp_path / TRAIN_2016[1] / "ISIC_0000001_Segmentation.png")
    with pytest.raises(UlffnError, match="mask is 3x3 but its image is 5x7"):
        IsicSegmentation(tmp_path, 2016, "train").load(0)


def test_images_only(tmp_path):
    for n in (4, 2):
        _image(tmp_path / TRAIN_2016[0], n)
    dataset = IsicSegmentation(tmp_path, 2016, "train", masks=False)
    assert dataset.ids == ["ISIC_0000002", "ISIC_0000004"] and dataset[0].mask_path is None
    assert dataset.load_image(1).shape == (8, 10, 3)
    assert "masks not read" in dataset.report()
    with pytest.raises(UlffnError, match="has no mask"):
        dataset.load(0)


@pytest.mark.parametrize(("year", "split", "message"), [(2016, "val", "ISIC 2016 has no val split"),
                                                        (2018, "train", "unknown ISIC year 2018"),
                                                        (2017, "valid", "unknown split 'valid'")])
def test_bad_year_or_split(tmp_path, year, split, message):
    with pytest.raises(UlffnError, match=message) as info:
        IsicSegmentation(tmp_path, year, split)
    assert info.value.hint


def test_2016_val_error_suggests_a_training_split(tmp_path):
    with pytest.raises(UlffnError) as info:
        IsicSegmentation(tmp_path, 2016, "val")
    assert "split_train_val" in info.value.hint


def test_split_train_val_is_seeded_disjoint_and_complete():
    items = [f"ISIC_{n:07d}" for n in range(900)]
    train, val = split_train_val(items, 200, seed=3)
    assert len(train) == 700 and len(val) == 200
    assert sorted(train + val) == items and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)  # input order kept
    assert split_train_val(items, 200, seed=3) == (train, val)
    assert split_train_val(items, 200, seed=4)[1] != val
    assert split_train_val(items, 0, seed=3) == (items, [])


@pytest.mark.parametrize("n_val", [-1, 5, 6])
def test_split_train_val_rejects_impossible_sizes(n_val):
    with pytest.raises(UlffnError, match=f"cannot hold out {n_val} of 5"):
        split_train_val(list(range(5)), n_val)
