"""``ulffn-deploy info``: table, JSON, and one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, run_cli, run_python

from ulffn_deploy.cli import cli

pytest.importorskip("torch")


def invoke(*args: str):
    return CliRunner().invoke(cli, ["info", *args])


def test_table_shows_parameters_gflops_and_stride():
    from ulffn_deploy.config import ModelConfig
    from ulffn_deploy.model import build_model

    result = invoke("--width", "8", "--size", "64")
    assert result.exit_code == 0, result.output
    parameters = sum(p.numel() for p in build_model(ModelConfig(width=8)).parameters())
    lines = dict(line.split("  ", 1) for line in result.output.strip().splitlines())
    assert lines["parameters"].strip() == f"{parameters:,}"
    assert lines["output stride"].strip() == "8"
    gflops = lines["GFLOPs / 64x64 image"].strip()
    assert float(gflops.split()[0]) > 0 and "multiply-add counts as 2" in gflops
    assert "w-ac" in lines["model"]


def test_json_has_the_documented_fields():
    result = invoke("--variant", "wo-ac", "--width", "16", "--size", "32", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert {"parameters", "gflops", "output_stride", "input_size", "variant", "width"} <= info.keys()
    assert info["variant"] == "wo-ac" and info["width"] == 16 and info["input_size"] == 32
    assert info["output_stride"] == 8
    assert isinstance(info["parameters"], int) and info["parameters"] > 0
    assert isinstance(info["gflops"], float) and info["gflops"] > 0


def test_variants_report_different_parameter_counts():
    counts = {
        v: json.loads(invoke("--variant", v, "--width", "8", "--json").output)["parameters"] for v in ("w-ac", "wo-ac")
    }
    assert counts["w-ac"] > counts["wo-ac"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--size", "500"), "pad to 504x504 or crop to 496x496"),
        (("--width", "12"), "width 12 is not a positive multiple of 8"),
        (("--size", "4"), "--size"),
        (("--variant", "big"), "--variant"),
    ],
)
def test_bad_arguments_fail_with_one_line(args, expected):
    proc = run_cli("info", *args)
    assert_one_line_error(proc, 2, expected)
    assert proc.stdout == ""


def test_without_torch_says_how_to_install_it():
    proc = run_python(
        """
        from ulffn_deploy.cli import main
        main(["info", "--width", "8"])
        """,
        absent=("torch",),
    )
    assert_one_line_error(proc, 2, "torch", "pip install")
