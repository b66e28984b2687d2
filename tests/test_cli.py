import numpy as np
from click.testing import CliRunner
from helpers import assert_one_line_error, run_cli, run_python
from PIL import Image

from ulffn_deploy.cli import COMMANDS, cli


def test_core_imports_and_help_import_no_heavy_package():
    result = run_python(
        """
        import ulffn_deploy, ulffn_deploy.preprocess, ulffn_deploy.metrics, ulffn_deploy.imageio
        import ulffn_deploy.config, ulffn_deploy.fileio, ulffn_deploy.runtime
        from ulffn_deploy.cli import main
        main(["--help"])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.heavy == []
    for name in COMMANDS:
        assert name in result.stdout


def test_every_command_has_help_without_heavy_imports():
    result = run_python(
        """
        from click.testing import CliRunner
        from ulffn_deploy.cli import COMMANDS, cli
        for name in COMMANDS:
            r = CliRunner().invoke(cli, [name, "--help"])
            assert r.exit_code == 0, (name, r.output, r.exception)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and result.heavy == []


def test_unknown_command_is_one_line_error():
    result = run_cli("no-such-command")
    assert_one_line_error(result, 2, "no-such-command")


def _write_mask(path, mask):
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def test_score_pairs_by_isic_id(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    half = mask.copy()
    half[2:4] = False
    _write_mask(truth / "ISIC_0000001_Segmentation.png", mask)
    _write_mask(truth / "ISIC_0000002_Segmentation.png", mask)
    (truth / "LICENSE.txt").write_text("licence")
    _write_mask(pred / "ISIC_0000002.png", half)  # listed first by name only if paired by position
    _write_mask(pred / "ISIC_0000001.png", mask)
    result = CliRunner().invoke(cli, ["score", str(pred), str(truth), "--json"])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(result.output)
    assert data["images"] == 2
    assert data["per_image"]["ISIC_0000001"]["dice"] == 1.0
    assert abs(data["per_image"]["ISIC_0000002"]["dice"] - 2 * 8 / (8 + 16)) < 1e-9
    table = CliRunner().invoke(cli, ["score", str(pred), str(truth)])
    assert "| 2 images |" in table.output


def test_score_rejects_non_binary_masks_and_empty_folders(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    result = run_cli("score", str(pred), str(truth))
    assert_one_line_error(result, 2)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(truth / "ISIC_0000001_Segmentation.png")
    _write_mask(pred / "ISIC_0000001.png", np.ones((8, 8), bool))
    result = run_cli("score", str(pred), str(truth))
    assert_one_line_error(result, 2, "two-valued")
