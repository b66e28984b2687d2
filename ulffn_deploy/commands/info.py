"""``ulffn-deploy info``: parameter count, GFLOPs and output stride of a ULFFN configuration."""

from __future__ import annotations

import json
from typing import Any

import click

from ulffn_deploy.config import DEFAULT_SIZE, VARIANTS, ModelConfig
from ulffn_deploy.deps import require


def format_info(info: dict[str, Any]) -> str:
    """The human-readable table printed by ``info``."""
    size = info["input_size"]
    rows = [
        ("model", f"ULFFN {info['variant']}, base width {info['width']}"),
        ("parameters", f"{info['parameters']:,}"),
        (f"GFLOPs / {size}x{size} image", f"{info['gflops']:.2f} ({info['flop_convention']})"),
        ("output stride", str(info["output_stride"])),
    ]
    pad = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{pad}}  {value}" for name, value in rows)


@click.command(name="info")
@click.option("--variant", type=click.Choice(VARIANTS), default="w-ac", show_default=True, help="Ablation variant.")
@click.option("--width", type=click.IntRange(min=8), default=64, show_default=True, help="Base width (multiple of 8).")
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=DEFAULT_SIZE,
    show_default=True,
    help="Square input side (multiple of 8).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(variant: str, width: int, size: int, as_json: bool) -> None:
    """Show the parameter count, GFLOPs per image and output stride of a ULFFN configuration."""
    require("torch")
    from ulffn_deploy.model import model_info

    info = model_info(ModelConfig(variant=variant, width=width), size=size)
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))
