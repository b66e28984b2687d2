"""An artifacts folder for a ULFFN of any width and input size, made by the shipped pipeline only.

A checkpoint of random weights with perturbed BatchNorm statistics (as ``tests/tiny_models.py`` makes
the tiny one: outputs then vary across pixels and images like a trained model's), synthetic dermoscopy
images (``synth``), ``export_checkpoint``, ``calibrate`` and ``registry.build``: the files a user's
``export`` / ``calibrate`` / ``build-engine`` commands write, never a variant of them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from ulffn_deploy.errors import UlffnError


def random_checkpoint(path: Path, width: int, size: int, seed: int = 0) -> Path:
    from ulffn_deploy.checkpoint import save_checkpoint
    from ulffn_deploy.config import Normalization
    from ulffn_deploy.model import random_model

    model = random_model(width, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model_config": model.config.to_dict(), "normalization": Normalization().to_dict(),
                           "input_size": size, "fit_mode": "full", "state_dict": model.eval().state_dict(), "epoch": 0})
    return path


def make_folder(folder: Path, width: int, size: int, test_images: int, calibration_images: int,
                builds: Sequence[tuple[str, str]], log: Callable[[str], None] = print) -> list[Path]:
    """``folder`` with run/best.pt, data/, model.{fp32,fp16,int8}.onnx and the ``builds`` (target, precision)
    artifacts; returns the artifacts built (a build or FP16 export that fails is logged and left out)."""
    from ulffn_deploy.calib.pipeline import calibrate
    from ulffn_deploy.export.pipeline import export_checkpoint
    from ulffn_deploy.synth import generate_dataset
    from ulffn_deploy.targets.registry import build

    checkpoint = random_checkpoint(folder / "run" / "best.pt", width, size)
    generate_dataset(folder / "data", n_train=calibration_images, n_test=test_images, size=size, force=True)
    exported = export_checkpoint(checkpoint, folder, images=2, data=folder / "data", log=log)
    for precision, why in exported.failed.items():
        log(f"{precision} not exported: {why}")
    calibrate(folder / "model.fp32.onnx", folder / "data", num_images=calibration_images, num_eval=0, log=log)
    built = []
    for target, precision in builds:
        try:
            built.append(build(target, folder / f"model.{precision}.onnx"))
        except UlffnError as exc:
            log(f"not built: {target} {precision}: {exc.message}")
    return built


def measure_folder(folder: Path, keep: Sequence[Path], out: Path) -> Path:
    """``out`` holding only the checkpoint, the data and the ``keep`` files (with their .bin and sidecars,
    as hard links), so that a benchmark there runs exactly these rows."""
    if out.exists():
        shutil.rmtree(out)
    (out / "run").mkdir(parents=True)
    _link(folder / "run" / "best.pt", out / "run" / "best.pt")
    shutil.copytree(folder / "data", out / "data", copy_function=_link)
    for path in keep:
        weights = [path.with_suffix(".bin")] if path.suffix == ".xml" else []
        for companion in (path, *weights, path.with_name(path.name + ".json")):
            if companion.is_file():
                _link(companion, out / companion.name)
    return out


def _link(source: str | Path, target: str | Path) -> None:
    try:
        Path(target).hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)
