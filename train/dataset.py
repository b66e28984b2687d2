"""Training and validation data: fitted crops as tensors, a resumable distributed sampler, the split.

A sample that cannot be read (corrupt image, mask of the wrong size ...) is not fatal: a
``SkippedSampleWarning`` names the file and the sample comes back marked invalid; the training step
leaves it out of the loss and the batch statistics, and validation leaves it out of the metrics.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ulffn_deploy.config import Normalization
from ulffn_deploy.data import IsicSegmentation, Sample, load_sample, split_train_val
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.preprocess import fit_image, fit_mask, normalize, placement_for
from ulffn_deploy.train.augment import augment

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # image 3xSxS float, mask SxS int64, valid bool


class SkippedSampleWarning(UserWarning):
    """A training or validation sample could not be read and is skipped."""


def load_fitted(sample: Sample, size: int, fit_mode: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(S x S x 3 uint8, S x S bool) crop of ``sample``, or None (with a warning) when it cannot be read."""
    try:
        image, mask = load_sample(sample)
    except UlffnError as exc:
        warnings.warn(f"skipping sample {sample.isic_id}: {exc}", SkippedSampleWarning, stacklevel=2)
        return None
    placement = placement_for(image.shape[0], image.shape[1], size, fit_mode)
    return fit_image(image, placement), fit_mask(mask, placement)


class SegmentationDataset(Dataset[Item]):
    """ISIC samples as (normalised image, class-index mask, valid) at the network input size.

    Keys are sample indices or (epoch, index) pairs; augmentation draws from a generator seeded by
    (seed, epoch, index), so a sample looks the same whichever process or worker loads it.
    """

    def __init__(self, samples: Sequence[Sample], size: int, fit_mode: str, normalization: Normalization,
                 augment: bool = False, seed: int = 0) -> None:
        self.samples = list(samples)
        self.size = size
        self.fit_mode = fit_mode
        self.normalization = normalization
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        loaded = load_fitted(self.samples[index], self.size, self.fit_mode)
        if loaded is None:
            image = np.zeros((self.size, self.size, 3), np.uint8)
            mask = np.zeros((self.size, self.size), bool)
        else:
            image, mask = loaded
            if self.augment:
                image, mask = augment(image, mask, np.random.default_rng((self.seed, epoch, index)))
        pixels = torch.from_numpy(normalize(image[None], self.normalization)[0])
        return pixels, torch.from_numpy(mask.astype(np.int64)), torch.tensor(loaded is not None)


class EpochSampler(DistributedSampler[tuple[int, int]]):
    """DistributedSampler yielding (epoch, index) keys that can start part-way into an epoch.

    The permutation depends only on (seed, epoch) and process r takes positions r, r + W, r + 2W, ...;
    with a per-process batch of B/W, global batch b is positions [bB, (b+1)B) of the permutation for
    any number of processes W. Resuming after k steps skips the first k per-process batches.
    """

    def __init__(self, dataset: Dataset[Item], world_size: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this process's share in the next iteration."""
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = cast(list[int], list(super().__iter__()))[self.start :]
        return iter([(self.epoch, int(i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def validation_count(n_images: int, val_count: int | None, val_fraction: float) -> int:
    """How many images to hold out: ``val_count``, else round(fraction * images), at least 1."""
    n_val = val_count if val_count is not None else max(1, round(n_images * val_fraction))
    if n_val >= n_images:
        raise UlffnError(f"cannot hold out {n_val} of {n_images} training images for validation",
                         "lower --val-count / --val-fraction or add images")
    return n_val


def train_val_split(data_dir: str, year: int, n_val: int | None, val_fraction: float,
                    seed: int) -> tuple[list[Sample], list[Sample]]:
    """The seeded train/validation split of the ISIC training set in ``data_dir``."""
    dataset = IsicSegmentation(data_dir, year=year, split="train")
    return split_train_val(list(dataset), validation_count(len(dataset), n_val, val_fraction), seed)
