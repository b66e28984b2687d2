"""The registry of deployment targets: a target is one module, and every command asks this registry.

A target module defines ``TARGET``, an instance of a :class:`Target` subclass that declares its name, the
artifact suffixes it loads, whether it can run here (and why not), its build options (declared once, as
:class:`BuildOption`), how it builds its artifact from an exported ONNX file, and how it loads a
``Segmenter``. Target modules import their heavy packages (torch, tensorrt, openvino, ...) inside
functions, so listing targets costs nothing. ``register()`` adds a module, e.g. for a user's own target.

One rule picks a folder's default artifact (:func:`default_artifact`): among the ``model.<precision>.*``
files whose target can run here, one that ``verify`` passed on this machine with the lowest measured
latency; else the highest-ranked target, and within it that target's preferred precision.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ulffn_deploy.config import PRECISIONS
from ulffn_deploy.errors import UlffnError

if TYPE_CHECKING:
    from ulffn_deploy.runtime.base import Segmenter

DEFAULT_ARTIFACTS = Path("artifacts")
ARTIFACT_PREFIX = "model."

_MODULES: list[str] = [
    "ulffn_deploy.targets.tensorrt",
    "ulffn_deploy.targets.tensorrt_rtx",
    "ulffn_deploy.targets.openvino",
    "ulffn_deploy.targets.onnxruntime",
    "ulffn_deploy.targets.pytorch",
    "ulffn_deploy.targets.triton",
]


@dataclass(frozen=True)
class BuildOption:
    """One build setting, declared once: it becomes a CLI option, a sidecar ``build_flags`` entry and a
    part of the recorded rebuild command. ``kind`` is int, float, str or bool (a flag); ``choices`` limit a
    str; ``minimum``/``maximum`` bound a number."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def validate(self, value: Any) -> Any:
        """``value`` converted to ``kind`` and checked; UlffnError naming the CLI flag otherwise."""
        if value is None:
            return None
        try:
            converted = self.kind(value) if self.kind is not bool else bool(value)
        except (TypeError, ValueError) as exc:
            raise UlffnError(f"{self.flag} {value!r} is not a {self.kind.__name__}") from exc
        if self.choices is not None and converted not in self.choices:
            raise UlffnError(f"{self.flag} {value!r} is not one of {', '.join(self.choices)}")
        if self.minimum is not None and converted < self.minimum:
            raise UlffnError(f"{self.flag} {value} is below {self.minimum:g}")
        if self.maximum is not None and converted > self.maximum:
            raise UlffnError(f"{self.flag} {value} is above {self.maximum:g}")
        return converted

    def to_args(self, value: Any) -> list[str]:
        """The command-line arguments that give ``value`` (none for the default)."""
        if value is None or value == self.default:
            return []
        if self.kind is bool:
            return [self.flag] if value else []
        return [self.flag, str(value)]


class Target:
    """A deployment target. Subclasses set the class attributes and override what they support."""

    name: ClassVar[str]
    title: ClassVar[str]  # for tables: "ONNX Runtime"
    suffixes: ClassVar[tuple[str, ...]]  # artifact suffixes it loads, longest match wins across targets
    build_suffix: ClassVar[str | None] = None  # what build() writes: model.<precision><build_suffix>
    build_options: ClassVar[tuple[BuildOption, ...]] = ()
    default_build_precision: ClassVar[str] = "fp32"
    # default-artifact rule: higher rank first, then the first precision of this list that exists
    rank: ClassVar[int] = 0
    preferred_precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    install_hint: ClassVar[str] = ""
    needs_file: ClassVar[bool] = True  # False for targets addressed by a URL

    def match_length(self, name: str) -> int:
        """How specifically ``name`` (lower case) names an artifact of this target: its longest matching suffix."""
        return max((len(suffix) for suffix in self.suffixes if name.endswith(suffix)), default=0)

    def unavailable_reason(self) -> str | None:
        """Why this target cannot run on this machine (one line), or None when it can."""
        return None

    def build_unavailable_reason(self) -> str | None:
        """Why this target cannot build artifacts here (one line), or None; by default the same as running."""
        return self.unavailable_reason()

    def artifact_problem(self, path: Path) -> str | None:
        """Why this artifact cannot run here although the target can (e.g. built for another GPU), or None."""
        return None

    def load(self, path: Path, **options: Any) -> Segmenter:
        raise NotImplementedError

    def build(self, source_onnx: Path, output: Path | None, options: Mapping[str, Any],
              command: Sequence[str]) -> Path:
        raise UlffnError(f"the {self.name} target loads artifacts but does not build them")

    @property
    def builds(self) -> bool:
        return self.build_suffix is not None

    def default_output(self, source_onnx: Path) -> Path:
        """``model.fp16.onnx`` -> ``model.fp16<build_suffix>`` beside it."""
        if self.build_suffix is None:
            raise UlffnError(f"the {self.name} target does not build artifacts")
        return source_onnx.with_name(source_onnx.name.removesuffix(".onnx") + self.build_suffix)

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every build option of this target, from ``given`` or its default, validated."""
        known = {option.name: option for option in self.build_options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
            raise UlffnError(f"{flags} do(es) not apply to --backend {self.name}",
                             f"options of {self.name}: {', '.join(o.flag for o in self.build_options) or 'none'}")
        return {name: option.validate(given.get(name, option.default)) for name, option in known.items()}

    def option_args(self, options: Mapping[str, Any]) -> list[str]:
        """``options`` as build-engine arguments, for the rebuild command a sidecar records."""
        return [arg for option in self.build_options for arg in option.to_args(options.get(option.name))]

    def rebuild_command(self, source_onnx: Path, output: Path, options: Mapping[str, Any]) -> list[str]:
        return ["ulffn-deploy", "build-engine", "--backend", self.name, "--onnx", str(source_onnx),
                "-o", str(output), *self.option_args(options)]


def register(module: str) -> None:
    """Add a target module (one that defines ``TARGET``) to the registry, ahead of the built-in ones."""
    if module not in _MODULES:
        _MODULES.insert(0, module)


def targets() -> list[Target]:
    """Every registered target, highest rank first."""
    found = []
    for module in _MODULES:
        target = getattr(importlib.import_module(module), "TARGET", None)
        if not isinstance(target, Target):
            raise UlffnError(f"target module {module} defines no TARGET")
        found.append(target)
    return sorted(found, key=lambda t: -t.rank)


def names() -> list[str]:
    return [target.name for target in targets()]


def builders() -> list[Target]:
    """Targets that build artifacts from an exported ONNX file."""
    return [target for target in targets() if target.builds]


def best_builder() -> Target:
    """The highest-ranked target that builds artifacts and runs here (ONNX Runtime runs everywhere)."""
    for target in builders():
        if target.build_unavailable_reason() is None and target.unavailable_reason() is None:
            return target
    raise UlffnError("no target that builds artifacts runs here", "pip install onnxruntime")


def target_named(name: str) -> Target:
    for target in targets():
        if target.name == name:
            return target
    raise UlffnError(f"unknown backend {name!r}", f"use one of {', '.join(names())}")


def target_for_path(path: str | os.PathLike[str]) -> Target:
    """The target whose artifact suffix ``path`` ends with (the longest matching suffix wins)."""
    name = os.fspath(path).lower()
    matches = [(length, target) for target in targets() if (length := target.match_length(name))]
    if not matches:
        known = sorted({suffix for target in targets() for suffix in target.suffixes})
        raise UlffnError(f"{path}: unknown model type", f"use a file ending in {', '.join(known)}")
    return max(matches, key=lambda match: match[0])[1]


def is_artifact(path: str | os.PathLike[str]) -> bool:
    try:
        target_for_path(path)
    except UlffnError:
        return False
    return True


def precision_of(path: Path) -> str | None:
    """``model.fp16.engine`` -> "fp16" (None when the name does not follow ``model.<precision>.*``)."""
    parts = path.name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in PRECISIONS else None


@dataclass(frozen=True)
class Candidate:
    """An artifact file in a folder, its target, and why it cannot run here (``problem``)."""

    path: Path
    target: Target
    precision: str
    problem: str | None


def candidates(folder: str | os.PathLike[str]) -> list[Candidate]:
    """Every ``model.<precision>.*`` artifact in ``folder`` with its target and whether it runs here."""
    folder = Path(folder)
    found = []
    reasons: dict[str, str | None] = {}
    for path in sorted(folder.glob(ARTIFACT_PREFIX + "*")):
        precision = precision_of(path)
        if precision is None or not path.is_file() or path.name.endswith(".json") or not is_artifact(path):
            continue
        target = target_for_path(path)
        if target.name not in reasons:
            reasons[target.name] = target.unavailable_reason()
        problem = reasons[target.name] or target.artifact_problem(path)
        found.append(Candidate(path, target, precision, problem))
    return found


VERIFIED_NAME = "verified.json"


def _file_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def record_verification(path: Path, passed: bool, median_ms: float | None, machine: str) -> None:
    """Remember in ``FOLDER/verified.json`` that ``verify`` passed (or failed) ``path`` on ``machine``."""
    from ulffn_deploy.fileio import write_json_atomic

    records = _verification_records(path.parent)
    records[path.name] = {"file": _file_key(path), "passed": bool(passed), "median_ms": median_ms, "machine": machine}
    write_json_atomic(path.parent / VERIFIED_NAME, records)


def _verification_records(folder: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads((folder / VERIFIED_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _verified_latency(path: Path) -> float | None:
    """The median latency (ms) a passing ``verify`` recorded for this very file on this machine, else None."""
    from ulffn_deploy.devices import machine_key

    record = _verification_records(path.parent).get(path.name)
    if not isinstance(record, dict) or not record.get("passed") or record.get("file") != _file_key(path):
        return None
    if record.get("machine") != machine_key() or not isinstance(record.get("median_ms"), (int, float)):
        return None
    return float(record["median_ms"])


def rank_candidates(found: Iterable[Candidate]) -> list[Candidate]:
    """Runnable candidates, best first: verified on this machine and fastest, then by target rank and precision."""
    runnable = [c for c in found if c.problem is None]

    def key(candidate: Candidate) -> tuple[int, float, int, int, int]:
        latency = _verified_latency(candidate.path)
        order = candidate.target.preferred_precisions
        precision_rank = order.index(candidate.precision) if candidate.precision in order else len(order)
        specific = candidate.target.match_length(candidate.path.name.lower())  # model.fp32.ort.onnx before .onnx
        return (0 if latency is not None else 1, latency or 0.0, -candidate.target.rank, precision_rank, -specific)

    return sorted(runnable, key=key)


DEFAULT_RULE = ("the best artifact in the folder that runs here: one that 'verify' passed on this machine, the "
                "fastest such; else by backend (TensorRT, OpenVINO, ONNX Runtime offline model, ONNX file) "
                "and that backend's preferred precision")


def default_artifact(folder: str | os.PathLike[str] = DEFAULT_ARTIFACTS,
                     log: Callable[[str], None] | None = None) -> Path:
    """The artifact every command uses when none is named (see ``DEFAULT_RULE``)."""
    folder = Path(folder)
    found = candidates(folder) if folder.is_dir() else []
    ranked = rank_candidates(found)
    if ranked:
        return ranked[0].path
    if found:
        why = "; ".join(f"{c.path.name}: {c.problem}" for c in found[:3])
        raise UlffnError(f"no artifact in {folder} runs on this machine ({why})",
                         "build one for this machine with 'ulffn-deploy build-engine --backend onnxruntime'")
    raise UlffnError(f"no model.<precision>.* artifact in {folder}",
                     "pass the model file, or make one with 'ulffn-deploy quickstart' or 'ulffn-deploy export'")


def default_onnx(folder: str | os.PathLike[str], precision: str) -> Path:
    """``FOLDER/model.<precision>.onnx``, with a hint on how to make it when it is missing."""
    if precision not in PRECISIONS:
        raise UlffnError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    path = Path(folder) / f"{ARTIFACT_PREFIX}{precision}.onnx"
    if not path.is_file():
        make = "ulffn-deploy calibrate" if precision == "int8" else "ulffn-deploy export"
        raise UlffnError(f"{path} does not exist", f"make it with '{make}', or pass --onnx PATH")
    return path


def build(target_name: str, source_onnx: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
          options: Mapping[str, Any] | None = None, command: Sequence[str] | None = None,
          precision: str | None = None) -> Path:
    """Build ``target_name``'s artifact from an exported ONNX file (of ``precision``, when given, checked
    against its metadata); returns the artifact's path."""
    target = target_named(target_name)
    reason = target.build_unavailable_reason()
    if reason:
        raise UlffnError(f"cannot build for {target.name}: {reason}", target.install_hint or None)
    source = Path(source_onnx)
    if precision is not None:
        from ulffn_deploy.targets.onnxruntime_build import describe_onnx

        describe_onnx(source, precision)
    resolved = target.resolve_options(options or {})
    out = Path(output) if output else target.default_output(source)
    if out.resolve() == source.resolve():
        raise UlffnError(f"output {out} would overwrite the source model", "choose another -o")
    return target.build(source, out, resolved, command or target.rebuild_command(source, out, resolved))


def load(path: str | os.PathLike[str], backend: str | None = None, **options: Any) -> Segmenter:
    """A Segmenter for ``path``: the target from its suffix, or ``backend`` when given."""
    target = target_named(backend) if backend else target_for_path(path)
    if not target.needs_file:
        return target.load(path, **options)  # type: ignore[arg-type]
    path = Path(path)
    if not path.is_file():
        raise UlffnError(f"{path}: no such model file")
    reason = target.unavailable_reason()
    if reason:
        raise UlffnError(f"cannot run {path.name} with {target.name}: {reason}", target.install_hint or None)
    return target.load(path, **options)
