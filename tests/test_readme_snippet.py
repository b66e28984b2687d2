"""The README's embedding snippet runs as written against a quickstart-like artifacts folder (issue 12)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from helpers import run_python
from PIL import Image
from tiny_models import sample_images, tiny_onnx

from ulffn_deploy.data import FOLDERS
from ulffn_deploy.quickstart import SYNTH

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    """The ```python block of the section "Embedding the runtime in a device"."""
    section = README.read_text(encoding="utf-8").split("## Embedding the runtime in a device", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the embedding section has no python block"
    return match.group(1)


def test_snippet_reads_an_image_the_quickstart_writes():
    (image,) = re.findall(r'read_rgb\("([^"]+)"\)', readme_snippet())
    first_test_image = f"ISIC_{SYNTH['n_train']:07d}.jpg"  # synth numbers test images after the training ones
    assert image == f"artifacts/data/{FOLDERS[(2016, 'test')][0]}/{first_test_image}"


def test_snippet_runs_as_written_on_a_cpu_machine(tmp_path):
    snippet = readme_snippet()
    (image_path,) = re.findall(r'read_rgb\("([^"]+)"\)', snippet)
    (tmp_path / image_path).parent.mkdir(parents=True)
    shutil.copy(tiny_onnx("fp32"), tmp_path / "artifacts" / "model.fp32.onnx")
    Image.fromarray(sample_images(1)[0]).save(tmp_path / image_path)
    proc = run_python(f"import os\nos.chdir({str(tmp_path)!r})\n" + snippet, absent=("torch", "onnx", "tensorrt"))
    assert proc.returncode == 0, proc.stderr
    name, backend, precision, fraction, word = proc.stdout.split()
    assert (name, backend, precision, word) == ("model.fp32.onnx", "onnxruntime", "fp32", "lesion")
    assert fraction.endswith("%") and 0 <= float(fraction[:-1]) <= 100
    assert proc.heavy == []
