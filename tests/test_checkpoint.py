"""Checkpoints: plain data only, atomic writes, safe loading, clear refusals."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ulffn_deploy.checkpoint import FORMAT, load_checkpoint, load_model, save_checkpoint  # noqa: E402
from ulffn_deploy.config import ModelConfig, Normalization  # noqa: E402
from ulffn_deploy.errors import UlffnError  # noqa: E402
from ulffn_deploy.model import build_model  # noqa: E402

PLAIN = (int, float, str, bool, type(None))


def _checkpoint(width: int = 8, variant: str = "w-ac") -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant=variant, width=width))
    return {
        "kind": "best",
        "model_config": model.config.to_dict(),
        "normalization": Normalization().to_dict(),
        "input_size": 32,
        "fit_mode": "paper",
        "state_dict": model.state_dict(),
        "epoch": 3,
        "history": [{"epoch": 1, "dice": 0.5}],
    }


def _only_plain_data(value: object) -> bool:
    if isinstance(value, (torch.Tensor, *PLAIN)):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _only_plain_data(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_only_plain_data(v) for v in value)
    return False


def test_round_trip_adds_format_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best.pt", _checkpoint())
    loaded = load_checkpoint(tmp_path / "best.pt")
    assert loaded["format"] == FORMAT and loaded["version"] == 1 and loaded["toolkit_version"]
    assert loaded["epoch"] == 3 and loaded["history"] == [{"epoch": 1, "dice": 0.5}]
    assert os.listdir(tmp_path) == ["best.pt"]


def test_load_model_returns_the_same_weights_in_eval_mode(tmp_path: Path) -> None:
    checkpoint = _checkpoint(variant="w-c")
    save_checkpoint(tmp_path / "best.pt", checkpoint)
    model, info = load_model(tmp_path / "best.pt")
    assert not model.training and model.config == ModelConfig("w-c", 8)
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][key]), key
    assert "state_dict" not in info and info["input_size"] == 32 and info["fit_mode"] == "paper"
    assert _only_plain_data(info) and not any(isinstance(v, torch.Tensor) for v in info.values())


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):  # what an attacker's file does: call a function while unpickling
            return (open, (str(marker), "w"))

    torch.save({"format": FORMAT, "version": 1, "state_dict": Payload()}, tmp_path / "evil.pt")
    with open(tmp_path / "evil_legacy.pt", "wb") as handle:
        pickle.dump({"format": FORMAT, "payload": Payload()}, handle)
    for name in ("evil.pt", "evil_legacy.pt"):
        with pytest.raises(UlffnError, match="refused to load") as info:
            load_model(tmp_path / name)
        assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"hello", b"PK\x03\x04truncated", b""])
def test_files_that_are_not_checkpoints(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(UlffnError, match="not a PyTorch checkpoint") as info:
        load_checkpoint(tmp_path / "x.pt")
    assert "\n" not in str(info.value)


def test_a_torch_file_without_the_format_marker_is_not_ours(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(UlffnError, match="not an ulffn-deploy checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UlffnError, match="not an ulffn-deploy checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_missing_file_and_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(UlffnError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    checkpoint = _checkpoint()
    del checkpoint["normalization"]
    save_checkpoint(tmp_path / "partial.pt", checkpoint)
    with pytest.raises(UlffnError, match="lacks normalization"):
        load_checkpoint(tmp_path / "partial.pt")


def test_weights_of_another_configuration_are_one_line_errors(tmp_path: Path) -> None:
    checkpoint = _checkpoint(width=8)
    checkpoint["model_config"] = {"variant": "w-ac", "width": 16}  # weights of width 8
    save_checkpoint(tmp_path / "wide.pt", checkpoint)
    with pytest.raises(UlffnError, match=r"weights do not match .*width 16.*of another shape") as info:
        load_model(tmp_path / "wide.pt")
    assert "\n" not in str(info.value)

    checkpoint = _checkpoint(variant="w-ac")
    checkpoint["model_config"] = {"variant": "wo-ac", "width": 8}  # has ASPP and CAM weights
    save_checkpoint(tmp_path / "variant.pt", checkpoint)
    with pytest.raises(UlffnError, match="unexpected"):
        load_model(tmp_path / "variant.pt")

    checkpoint["model_config"] = {"variant": "nope", "width": 8}
    save_checkpoint(tmp_path / "bad_config.pt", checkpoint)
    with pytest.raises(UlffnError, match="unknown ULFFN variant"):
        load_model(tmp_path / "bad_config.pt")


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    torch.save({**_checkpoint(), "format": FORMAT, "version": 99}, tmp_path / "new.pt")
    with pytest.raises(UlffnError, match="newer"):
        load_checkpoint(tmp_path / "new.pt")


def test_a_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(UlffnError, match="not a PyTorch checkpoint"):
        load_checkpoint(path)
