"""ulffn_deploy.train: training (DDP under torchrun), checkpoints and evaluation. Needs torch.

``train(config_or_options)`` runs a training in this process; ``python -m ulffn_deploy.train`` is the
entry point torchrun starts on every process. Checkpoints: ``ulffn_deploy.checkpoint``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "evaluate_checkpoint", "load_checkpoint", "load_model", "make_config", "train"]

_HOMES = {
    "TrainConfig": "presets",
    "make_config": "presets",
    "train": "trainer",
    "load_checkpoint": "ulffn_deploy.checkpoint",
    "load_model": "ulffn_deploy.checkpoint",
    "evaluate_checkpoint": "evaluate",
}


def __getattr__(name: str) -> Any:
    # torch is imported only when something that needs it is used
    if name not in _HOMES:
        raise AttributeError(f"module 'ulffn_deploy.train' has no attribute {name!r}")
    import importlib

    home = _HOMES[name]
    return getattr(importlib.import_module(home if "." in home else f"ulffn_deploy.train.{home}"), name)
