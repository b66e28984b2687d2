"""Regenerate docs/synthetic_preview.png: a grid of synthetic dermoscopy images with their lesion
mask outlines in green.

    python benchmarks/make_synth_preview.py [--out docs/synthetic_preview.png] [--seed 0] [--size 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from ulffn_deploy.fileio import atomic_path
from ulffn_deploy.synth import preview_grid

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "synthetic_preview.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="shorter side of each image in pixels")
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--rows", type=int, default=3)
    args = parser.parse_args()
    grid = preview_grid(args.seed, args.size, args.columns, args.rows)
    # a 256-colour palette keeps the PNG well under 1 MB; the images are photographs, so dithering hides it
    with atomic_path(args.out) as tmp:
        palette = grid.quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
        palette.save(tmp, format="PNG", optimize=True)
    print(f"wrote {args.out} ({grid.width}x{grid.height}, {args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
