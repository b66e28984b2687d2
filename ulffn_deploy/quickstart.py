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
PARITY_IMAGES = 8  # test images export and the INT8 check compare on


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

        result: dict[str, Any] = evaluate_checkpoint(self.checkpoint, self.data, split="test")
        self.log(f"{self.checkpoint} on {result['images']} synthetic test images ({result['protocol']}):")
        self.log(format_table({"ULFFN cpu-demo": result["metrics"]}))
        return result

    def export(self, _: dict[str, Any]) -> dict[str, Any]:
        from ulffn_deploy.export.pipeline import export_checkpoint

        result = export_checkpoint(self.checkpoint, self.artifacts, images=PARITY_IMAGES, data=self.data, log=self.log)
        if result.failed:
            raise UlffnError(f"export failed its checks for {', '.join(result.failed)}", "see the table above")
        return {"paths": {k: str(v) for k, v in result.paths.items()}, "comparisons": result.comparisons,
                "checks": result.checks}

    def calibrate(self, summary: dict[str, Any]) -> dict[str, Any]:
        from ulffn_deploy.calib.pipeline import calibrate
        from ulffn_deploy.harness import check, compare, format_comparisons, image_source, tolerance_for
        from ulffn_deploy.runtime import Segmenter

        report = calibrate(self.artifacts / "model.fp32.onnx", self.data, log=self.log)
        exported = summary["export"]
        rows = {p: (exported["comparisons"][p], exported["checks"][p]) for p in exported["comparisons"]}
        with Segmenter.load(self.checkpoint) as reference, Segmenter.load(self.artifacts / "model.int8.onnx") as int8:
            source = image_source(self.data, PARITY_IMAGES, reference.input_size)  # the images export compared on
            comparison = compare(reference, int8, source)
        rows["int8"] = (comparison, check(comparison, tolerance_for("int8")))
        self.log(f"\nAgainst PyTorch (ONNX Runtime CPU, {source.description}, fit {comparison.fit_mode}):")
        self.log(format_comparisons(rows))
        return {"report": report, "int8": comparison}

    def build(self, _: dict[str, Any]) -> dict[str, Any]:
        """The targets that build here and whose artifacts run here (``registry.builders_here``: never one for
        a device this machine lacks): the best one builds each of its preferred precisions, the others their
        default precision; each artifact is verified briefly, so that the default-artifact rule can pick the
        fastest one that passes here."""
        from ulffn_deploy.targets.registry import builders_here, default_artifact

        targets = builders_here()
        if not targets:
            raise UlffnError("no target that builds artifacts runs here", "pip install onnxruntime")
        self.log(f"building for {', '.join(t.title for t in targets)} (the targets that build and run here)")
        wanted = [(target.name, precision) for target in targets
                  for precision in (target.preferred_precisions if target is targets[0] else (target.default_build_precision,))]
        built = [path for name, precision in wanted if (path := self._build_one(name, precision)) is not None]
        verified = {path.name: self._quick_verify(path) for path in built}
        chosen = default_artifact(self.artifacts, log=self.log)
        self.log(f"default artifact (fastest that passed verify here): {chosen.name}")
        return {"backends": [t.name for t in targets], "artifact": str(chosen), "built": [str(p) for p in built],
                "verified": verified}

    def _build_one(self, target: str, precision: str) -> Path | None:
        from ulffn_deploy.targets.registry import build, default_onnx

        try:
            path = build(target, default_onnx(self.artifacts, precision))
        except UlffnError as exc:
            self.log(f"not built: {target} {precision}: {exc.message}")
            return None
        self.log(f"built {path} ({target}, {precision})")
        return path

    def _quick_verify(self, path: Path) -> dict[str, Any]:
        """verify on the test images with a short latency schedule; it records the verdict and median for
        the default-artifact rule."""
        from ulffn_deploy.latency import Schedule
        from ulffn_deploy.verify import verify_artifact

        try:
            report = verify_artifact(path, self.checkpoint, self.data, schedule=Schedule(iterations=20, duration_s=1.0))
        except UlffnError as exc:
            self.log(f"verify {path.name}: could not run ({exc.message})")
            return {"passed": False, "median_ms": None}
        median = report["latency"]["series"]["host"]["median"]
        self.log(f"verify {path.name}: {'pass' if report['passed'] else 'FAIL'}, median {median:.2f} ms")
        return {"passed": report["passed"], "median_ms": median}

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
