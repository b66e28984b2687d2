"""Model configuration and input normalisation: plain data, stored in checkpoints and ONNX metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ulffn_deploy.errors import UlffnError

VARIANTS = ("w-ac", "w-a", "w-c", "wo-ac")
FIT_MODES = ("full", "paper")  # how an image fits the square input (docs/model.md, Fitting an image)
PRECISIONS = ("fp32", "fp16", "int8")  # one ONNX file each (docs/architecture.md, Precision in the ONNX graph)
OUTPUT_STRIDE = 8  # encoder units 1-3 downsample by 2, unit 4 does not (docs/model.md)
DEFAULT_SIZE = 512
MAX_INPUT_SIZE = 2048  # 4x the paper's 512: a bound on any input size read from a file (training, metadata)


@dataclass(frozen=True)
class ModelConfig:
    """What builds a ULFFN: the ablation variant and the base width (64 in the paper)."""

    variant: str = "w-ac"
    width: int = 64

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise UlffnError(f"unknown ULFFN variant {self.variant!r}", f"use one of {', '.join(VARIANTS)}")
        if self.width < 8 or self.width % 8:
            raise UlffnError(f"width {self.width} is not a positive multiple of 8", "use 8, 16, 32 or 64")

    @property
    def has_aspp(self) -> bool:
        return self.variant in ("w-ac", "w-a")

    @property
    def has_cam(self) -> bool:
        return self.variant in ("w-ac", "w-c")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        try:
            return cls(variant=str(data["variant"]), width=int(data["width"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UlffnError(f"not a ULFFN model configuration: {data!r}") from exc


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std applied to RGB values scaled to [0, 1]."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        try:
            mean = tuple(float(v) for v in data["mean"])
            std = tuple(float(v) for v in data["std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UlffnError(f"not a normalisation: {data!r}") from exc
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UlffnError(f"normalisation needs 3 means and 3 positive stds, got {data!r}")
        return cls(mean=mean, std=std)  # type: ignore[arg-type]
