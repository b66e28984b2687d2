"""The whole pipeline on a synthetic ISIC-layout set: synth -> train -> evaluate -> export -> calibrate ->
build -> predict -> verify. Every stage calls the same code as its CLI command; nothing is special-cased."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulffn_deploy.errors import UlffnError

Log = Callable[[str], None]

# the synthetic set: ISIC 2016 layout, images 128 px on the shorter side (cpu-demo trains at 96)
SYNTH: dict[str, Any] = {"n_train": 200, "n_test": 40, "size": 128, "seed": 0}
PREDICT_IMAGES = 4


@dataclass
class Quickstart:
    """One quickstart run; ``run()`` returns a summary with each stage's result and time."""

    artifacts: Path
    log: Log = print
    epochs: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.artifacts / "data"

    @property
    def checkpoint(self) -> Path:
        return self.artifacts / "run" / "best.pt"

    def run(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        for name, stage in (("synth", self.synth), ("train", self.train), ("evaluate", self.evaluate),
                            ("export", self.export), ("calibrate", self.calibrate), ("build", self.build),
                            ("predict", self.predict), ("verify", self.verify)):
            self.log(f"\n== {name} " + "=" * (60 - len(name)))
            started = time.perf_counter()
            summary[name] = stage(summary)
            self.timings[name] = time.perf_counter() - started
        summary["seconds"] = dict(self.timings)
        self.log("\n" + self.timing_table())
        return summary

    def timing_table(self) -> str:
        rows = [f"| {name} | {seconds:.1f} |" for name, seconds in self.timings.items()]
        total = sum(self.timings.values())
        return "\n".join(["| stage | seconds |", "|---|---|", *rows, f"| total | {total:.1f} |"])

    def synth(self, _: dict[str, Any]) -> dict[str, Any]:
        from ulffn_deploy.synth import generate_dataset

        result = generate_dataset(self.data, force=True, **SYNTH)
        self.log(f"wrote {result['n_train']} training and {result['n_test']} test images to {self.data} "
                 f"(synthetic dermoscopy, ISIC 2016 layout) in {result['seconds']:.1f} s")
        return result

    def train(self, _: dict[str, Any]) -> dict[str, Any]:
        from ulffn_deploy.train import make_config, train

        config = make_config(str(self.data), str(self.artifacts / "run"), preset="cpu-demo", epochs=self.epochs,
                             overwrite=True)  # quickstart always starts its run again
        self.log(f"training ULFFN {config.variant} width {config.width} at {config.size} px for {config.epochs} "
                 f"epochs (preset cpu-demo) -> {config.out}")
        result: dict[str, Any] = train(config)
        return result

    def evaluate(self, _: dict[str, Any]) -> dict[str, Any]:
        from ulffn_deploy.metrics import format_table
        from ulffn_deploy.train import evaluate_checkpoint

        result: dict[str, Any] = evaluate_checkpoint(self.checkpoint, self.data, split="test", fit_mode="paper")
        self.log(f"{self.checkpoint} on {result['images']} synthetic test images ({result['protocol']}):")
        self.log(format_table({"ULFFN cpu-demo": result["metrics"]}))
        return result

    def export(self, _: dict[str, Any]) -> dict[str, Any]:
        from ulffn_deploy.export.pipeline import export_checkpoint

        result = export_checkpoint(self.checkpoint, self.artifacts, data=self.data, log=self.log)
        return {"paths": {k: str(v) for k, v in result.paths.items()}, "parity": result.reports}

    def calibrate(self, summary: dict[str, Any]) -> dict[str, Any]:
        from ulffn_deploy.calib.pipeline import calibrate
        from ulffn_deploy.export.parity import format_parity_table

        report = calibrate(self.artifacts / "model.fp32.onnx", self.data, log=self.log)
        fp32 = summary["export"]["parity"]
        int8 = self._int8_parity()
        self.log("\nParity against PyTorch (ONNX Runtime CPU, synthetic dermoscopy images):")
        self.log(format_parity_table([*fp32, int8]))
        return {"report": report, "parity_int8": int8}

    def build(self, _: dict[str, Any]) -> dict[str, Any]:
        from ulffn_deploy.targets.registry import best_builder, build, default_onnx

        target = best_builder()
        precision = target.default_build_precision
        if target.name == "onnxruntime":
            self.log("TensorRT or an NVIDIA GPU is not available here: building for ONNX Runtime on the CPU")
        path = build(target.name, default_onnx(self.artifacts, precision))
        self.log(f"built {path} ({target.name}, {precision})")
        return {"backend": target.name, "precision": precision, "artifact": str(path)}

    def predict(self, summary: dict[str, Any]) -> dict[str, Any]:
        from ulffn_deploy.data import IsicSegmentation
        from ulffn_deploy.predict import predict_paths

        test = IsicSegmentation(self.data, 2016, "test")
        images = [sample.image_path for sample in list(test)[:PREDICT_IMAGES]]
        out = self.artifacts / "predictions"
        result = predict_paths(summary["build"]["artifact"], images, out, progress=False)
        self.log(f"predicted {len(result.predicted)} images -> {out}/ (masks, overlays, predictions.csv); "
                 f"open the overlays, e.g. {sorted(out.glob('*_overlay.png'))[0]}")
        return {"out_dir": str(out), "images": len(result.predicted)}

    def verify(self, summary: dict[str, Any]) -> dict[str, Any]:
        from ulffn_deploy.latency import Schedule
        from ulffn_deploy.verify import format_verify_report, verify_artifact

        report: dict[str, Any] = verify_artifact(summary["build"]["artifact"], self.checkpoint, self.data,
                                                 schedule=Schedule.from_options(iterations=20))
        self.log(format_verify_report(report))
        self.log("\nEvery backend and precision side by side: ulffn-deploy benchmark --artifacts "
                 f"{self.artifacts} (writes Markdown, JSON and a plot)")
        if not report["passed"]:
            raise UlffnError(f"verify failed for {summary['build']['artifact']}", "see the table above")
        return report

    def _int8_parity(self) -> dict[str, Any]:
        """The INT8 model against PyTorch on the images and preprocessing export's parity check uses."""
        from ulffn_deploy.config import Normalization
        from ulffn_deploy.export.parity import parity_batch, parity_images, parity_report
        from ulffn_deploy.train import load_model

        model, info = load_model(self.checkpoint)
        size = int(info["input_size"])
        normalization = Normalization.from_dict(info["normalization"])
        batch = parity_batch(parity_images(8, size, self.data), size, str(info["fit_mode"]), normalization)
        return parity_report(self.artifacts / "model.int8.onnx", model, batch, "int8",
                             tolerances={"dice_mean": 0.98})
