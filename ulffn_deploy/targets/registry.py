"""The registry of deployment targets: a target is one module, and every command asks this registry.

A target module defines ``TARGET``, an instance of a :class:`Target` subclass that declares its name, the
artifact suffixes it loads, whether it can run here (and why not), its build options (declared once, as
:class:`BuildOption`), how it builds its artifact from an exported ONNX file, and how it loads a
``Segmenter``. Target modules import their heavy packages (torch, tensorrt, openvino, ...) inside
functions, so listing targets costs nothing. ``register()`` adds a module, e.g. for a user's own target.

One rule picks a folder's default artifact (:func:`default_artifact`): among the ``model.<precision>.*``
files whose target can run here, one that ``verify`` passed on this machine with the lowest measured
latency; else the highest-ranked target, and within it that target's preferred precision.

A built artifact's sidecar records the sha256 of the ONNX file it was built from (``source_onnx``);
``Target.stale_problem`` compares it with the file of that name beside the artifact now, and checks that
its companion files exist. A stale or incomplete artifact is skipped with a warning naming its rebuild
command wherever artifacts are chosen or listed (``candidates``), and refused when named (``load``).
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

    def to_args(self, value: Any, flag: str | None = None) -> list[str]:
        """The command-line arguments that give ``value`` (none for the default) with ``flag`` (its own)."""
        flag = flag or self.flag
        if value is None or value == self.default:
            return []
        if self.kind is bool:
            return [flag] if value else []
        return [flag, str(value)]


class Target:
    """A deployment target. Subclasses set the class attributes and override what they support; every
    attribute has a default here, so a target declares only what differs."""

    name: ClassVar[str]
    title: ClassVar[str]  # for tables: "ONNX Runtime"
    description: ClassVar[str] = ""  # one line for 'info': what the artifact is
    runs_on: ClassVar[str] = "the CPU"  # where its artifacts run, for messages: "an NVIDIA GPU"
    packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions describe it (benchmark, info)
    suffixes: ClassVar[tuple[str, ...]] = ()  # artifact suffixes it loads, longest match wins across targets
    build_suffix: ClassVar[str | None] = None  # what build() writes: model.<precision><build_suffix>
    build_options: ClassVar[tuple[BuildOption, ...]] = ()
    load_options: ClassVar[tuple[BuildOption, ...]] = ()  # what load() takes, e.g. "device", as CLI options
    default_build_precision: ClassVar[str] = "fp32"
    # default-artifact rule: higher rank first, then the first precision of this list that exists
    rank: ClassVar[int] = 0
    preferred_precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    install_hint: ClassVar[str] = ""
    addressed_by_url: ClassVar[bool] = False  # True: its artifacts are server URLs (accepts_url), not files

    def accepts_url(self, address: str) -> bool:
        """Whether ``address`` is a URL this target serves (targets addressed by a URL only)."""
        return False

    def suffix_length(self, name: str) -> int:
        """How specifically ``name`` (lower case) names an artifact of this target: its longest matching suffix."""
        return max((len(suffix) for suffix in self.suffixes if name.endswith(suffix)), default=0)

    def unavailable_reason(self) -> str | None:
        """Why this target cannot run on this machine (one line), or None when it can."""
        return None

    def build_unavailable_reason(self) -> str | None:
        """Why this target cannot build artifacts here (one line), or None; by default the same as running."""
        return self.unavailable_reason()

    def runs_here(self) -> bool:
        return self.unavailable_reason() is None

    def builds_here(self) -> bool:
        return self.builds and self.build_unavailable_reason() is None

    def artifact_problem(self, path: Path) -> str | None:
        """Why this artifact cannot run here although the target can (e.g. built for another GPU), or None.
        Stale and incomplete artifacts are found for every target by ``stale_problem``."""
        return None

    def companion_files(self, path: Path) -> tuple[Path, ...]:
        """Files besides ``path`` itself that the artifact needs to run (OpenVINO: the ``.bin`` of an ``.xml``)."""
        return ()

    def artifact_files(self, path: Path) -> list[Path]:
        """Every file of the artifact: itself, its companion files and its sidecar when it has one."""
        from ulffn_deploy.runtime.metadata import sidecar_path

        sidecar = sidecar_path(path)
        return [path, *self.companion_files(path), *([sidecar] if sidecar.is_file() else [])]

    def model_bytes(self, path: Path) -> int:
        """The bytes of the model: the artifact and its companion files (not the sidecar)."""
        return sum(p.stat().st_size for p in (path, *self.companion_files(path)) if p.is_file())

    def versions(self) -> dict[str, str | None]:
        """The installed version of each of ``packages`` (None where not installed)."""
        return {package: installed_version(package) for package in self.packages}

    def device_of(self, info: Mapping[str, Any]) -> str:
        """The device a loaded Segmenter's ``info`` says it runs on (benchmark's device column)."""
        gpu = info.get("gpu")
        if isinstance(gpu, Mapping) and gpu.get("name"):
            return str(gpu["name"])
        providers = info.get("providers")
        if providers:
            return str(providers[0]).replace("ExecutionProvider", "").lower()
        return str(info.get("device", "cpu")).lower()

    def load_option(self, name: str) -> BuildOption | None:
        return next((option for option in self.load_options if option.name == name), None)

    def stale_problem(self, path: Path) -> str | None:
        """Why a built artifact must not be used although it may run: a companion file is missing, or its
        sidecar records a source ONNX whose sha256 differs from the file of that name beside it now (the
        model was exported again after the build). None when it is whole and current, or not built here."""
        for companion in self.companion_files(path):
            if not companion.is_file():
                return f"{path.name} is incomplete: its {companion.name} is missing; rebuild: {self._rebuild_text(path, None)}"
        sidecar = _sidecar_or_none(path)
        if sidecar is None:
            return None
        recorded_files = sidecar.get("files")
        if isinstance(recorded_files, Mapping):
            for model_file in (path, *self.companion_files(path)):
                size = recorded_files.get(model_file.name)
                if isinstance(size, int) and model_file.stat().st_size != size:
                    return (f"{path.name} does not match its sidecar: {model_file.name} has {model_file.stat().st_size:,} "
                            f"bytes, the build wrote {size:,} (truncated or replaced); rebuild: "
                            f"{self._rebuild_text(path, sidecar)}")
        from ulffn_deploy.targets.onnx_source import source_record

        record = source_record(sidecar)
        if record is None:
            return None
        name, recorded = record
        source = path.parent / name
        if not source.is_file():
            return None  # built elsewhere and shipped alone: nothing here to differ from
        current = _cached_sha256(source)
        if current != recorded:
            return (f"{path.name} is stale: it was built from another {name} than the one in {path.parent} now "
                    f"(sha256 {recorded[:12]}... recorded, {current[:12]}... now); rebuild: "
                    f"{self._rebuild_text(path, sidecar)}")
        return None

    def _rebuild_text(self, path: Path, sidecar: Mapping[str, Any] | None) -> str:
        from ulffn_deploy.runtime.metadata import shown_build_command

        command = shown_build_command(sidecar) if sidecar is not None else None
        if command:
            return command
        import shlex

        precision = precision_of(path) or self.default_build_precision
        return shlex.join(self.rebuild_command(path.with_name(f"{ARTIFACT_PREFIX}{precision}.onnx"), path, {}))

    def problem_here(self, path: Path) -> str | None:
        """Why ``path`` cannot be used on this machine (another target's artifact, target unavailable, stale
        or incomplete, or the target's own ``artifact_problem``), or None."""
        return (self.other_target_problem(path) or self.unavailable_reason() or self.stale_problem(path)
                or self.artifact_problem(path))

    def other_target_problem(self, path: Path) -> str | None:
        """Why ``path`` is not this target's at all: its sidecar names another target (an RTX engine renamed
        to .engine, say), or None."""
        sidecar = _sidecar_or_none(path)
        built_by = sidecar.get("backend") if sidecar is not None else None
        if not isinstance(built_by, str) or built_by == self.name:
            return None
        suffix = next((str(t.build_suffix) for t in targets() if t.name == built_by and t.build_suffix), None)
        rename = f"; give it that target's suffix ({suffix})" if suffix else ""
        return f"{path.name} was built by the {built_by} target, not {self.name} (its sidecar says so){rename}"

    def checked_here(self, path: Path) -> str:
        """What can be checked of an artifact on a machine that cannot run it: its size, sidecar and source."""
        parts = [f"{self.model_bytes(path) / 1e6:.2f} MB"]
        sidecar = _sidecar_or_none(path)
        if sidecar is not None:
            parts.append("sidecar read")
            from ulffn_deploy.targets.onnx_source import source_record

            if isinstance(sidecar.get("build_seconds"), (int, float)):
                parts.append(f"built in {sidecar['build_seconds']:.1f} s")
            record = source_record(sidecar)
            if record is not None:
                source = path.parent / record[0]
                state = ("not beside it" if not source.is_file() else
                         "unchanged since the build" if _cached_sha256(source) == record[1]
                         else "changed since the build: stale")
                parts.append(f"from {record[0]} ({state})")
        return ", ".join(parts)

    def describe_file(self, path: Path) -> dict[str, Any]:
        """What 'info' shows of ``path`` beyond its sidecar, JSON-ready: ``metadata`` (an
        ``ArtifactMetadata.to_dict()``) where the file itself carries it, and any section of the target's own."""
        return {}

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
        """Every build option of this target, from ``given`` or its default, validated by this target's own
        declaration (options of the same name in other targets play no part)."""
        known = {option.name: option for option in self.build_options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
            raise UlffnError(f"{flags} do(es) not apply to --backend {self.name}",
                             f"options of {self.name}: {', '.join(o.flag for o in self.build_options) or 'none'}")
        return {name: option.validate(given.get(name, option.default)) for name, option in known.items()}

    def option_args(self, options: Mapping[str, Any]) -> list[str]:
        """``options`` as build-engine arguments, for the rebuild command a sidecar records."""
        flags = option_flags()
        return [arg for option in self.build_options
                for arg in option.to_args(options.get(option.name), flags.get((self.name, option.name)))]

    def rebuild_command(self, source_onnx: Path, output: Path, options: Mapping[str, Any]) -> list[str]:
        return ["ulffn-deploy", "build-engine", "--backend", self.name, "--onnx", str(source_onnx),
                "-o", str(output), *self.option_args(options)]


def installed_version(package: str) -> str | None:
    """The installed version of a distribution (or of its -cu13/-cu12/-gpu variant), None when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    for name in (package, f"{package}-cu13", f"{package}-cu12", f"{package}-gpu"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    """The file's sha256, computed once per (path, size, mtime) in this process."""
    from ulffn_deploy.fileio import sha256_file

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def _sidecar_or_none(path: Path) -> dict[str, Any] | None:
    from ulffn_deploy.runtime.metadata import read_sidecar, sidecar_path

    if not sidecar_path(path).is_file():
        return None
    try:
        return read_sidecar(path)
    except UlffnError:
        return None


def option_flags() -> dict[tuple[str, str], str]:
    """The build-engine flag of every (target, option): ``--name`` where every target declaring ``name``
    agrees on whether it is a flag or takes a value, else ``--<target>-<name>`` for each of them. The value
    of a shared flag is validated by the chosen backend's own declaration (``Target.resolve_options``)."""
    declared: dict[str, list[tuple[Target, BuildOption]]] = {}
    for target in builders():
        for option in target.build_options:
            declared.setdefault(option.name, []).append((target, option))
    flags = {}
    for name, owners in declared.items():
        shared = len({option.kind is bool for _, option in owners}) == 1
        for target, option in owners:
            flags[(target.name, name)] = option.flag if shared else f"--{target.name}-{option.flag[2:]}"
    return flags


TARGETS_ENV = "ULFFN_DEPLOY_TARGETS"  # comma-separated modules of a user's own targets, for the CLI


def register(module: str) -> None:
    """Add a target module (one that defines ``TARGET``) to the registry, ahead of the built-in ones. The CLI
    also registers every module named in the environment variable ``ULFFN_DEPLOY_TARGETS``."""
    if module not in _MODULES:
        _MODULES.insert(0, module)


def _modules() -> list[str]:
    named = [module.strip() for module in os.environ.get(TARGETS_ENV, "").split(",") if module.strip()]
    return [*(module for module in named if module not in _MODULES), *_MODULES]


def _import_target_module(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if module in _MODULES:
            raise
        raise UlffnError(f"target module {module} (from {TARGETS_ENV}) cannot be imported: {exc}",
                         "put its folder on PYTHONPATH, or fix the module name") from exc


def targets() -> list[Target]:
    """Every registered target, highest rank first."""
    found = []
    for module in _modules():
        target = getattr(_import_target_module(module), "TARGET", None)
        if not isinstance(target, Target):
            raise UlffnError(f"target module {module} defines no TARGET")
        found.append(target)
    return sorted(found, key=lambda t: -t.rank)


def names() -> list[str]:
    return [target.name for target in targets()]


def builders() -> list[Target]:
    """Targets that build artifacts from an exported ONNX file."""
    return [target for target in targets() if target.builds]


def builders_here() -> list[Target]:
    """Targets that can both build artifacts here and run them here, highest rank first."""
    return [target for target in builders() if target.builds_here() and target.runs_here()]


def best_builder() -> Target:
    """The highest-ranked target that builds artifacts here and whose artifacts run here (a target that only
    builds here, for a device elsewhere, is built only when named). ONNX Runtime runs everywhere."""
    found = builders_here()
    if found:
        return found[0]
    raise UlffnError("no target that builds artifacts runs here", "pip install onnxruntime")


def target_named(name: str) -> Target:
    for target in targets():
        if target.name == name:
            return target
    raise UlffnError(f"unknown backend {name!r}", f"use one of {', '.join(names())}")


def target_for_path(path: str | os.PathLike[str]) -> Target:
    """The target that serves ``path`` when it is a URL one accepts; else the target whose artifact suffix
    it ends with (the longest matching suffix wins)."""
    address = os.fspath(path)
    for target in targets():
        if target.addressed_by_url and target.accepts_url(address):
            return target
    name = address.lower()
    matches = [(length, target) for target in targets() if (length := target.suffix_length(name))]
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
    """An artifact file in a folder, its target, and why it cannot be used here (``problem``; ``stale`` when
    that is because it is stale or incomplete, a message naming the rebuild command)."""

    path: Path
    target: Target
    precision: str
    problem: str | None
    stale: str | None = None

    @property
    def label(self) -> str:
        """The target's title; "(built)" for its build output where it also runs other files (ONNX Runtime)."""
        suffix = self.target.build_suffix
        built = (suffix is not None and self.path.name.endswith(suffix)
                 and any(other != suffix and suffix.endswith(other) for other in self.target.suffixes))
        return self.target.title + (" (built)" if built else "")


def candidate(path: Path, target: Target | None = None) -> Candidate:
    """``path`` as a Candidate: its target (from its suffix unless given) and what stops it being used here."""
    target = target or target_for_path(path)
    return _candidate(path, target, target.unavailable_reason())


def _candidate(path: Path, target: Target, reason: str | None) -> Candidate:
    if reason:
        where = f"{reason}; it runs on {target.runs_on}"
        return Candidate(path, target, precision_of(path) or "-",
                         f"{where} (checked here: {target.checked_here(path)})" if path.is_file() else where)
    stale = target.stale_problem(path)
    return Candidate(path, target, precision_of(path) or "-", stale or target.artifact_problem(path), stale)


def candidates(folder: str | os.PathLike[str]) -> list[Candidate]:
    """Every ``model.<precision>.*`` artifact in ``folder`` with its target and whether it can be used here."""
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
        found.append(_candidate(path, target, reasons[target.name]))
    return found


def warn_stale(found: Iterable[Candidate], log: Callable[[str], None] | None = None) -> None:
    """One warning per stale or incomplete candidate (to ``log``, else standard error)."""
    import sys

    say = log or (lambda message: print(message, file=sys.stderr))
    for item in found:
        if item.stale:
            say(f"warning (skipped): {item.stale}")


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
        specific = candidate.target.suffix_length(candidate.path.name.lower())  # model.fp32.ort.onnx before .onnx
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
    warn_stale(found, log)
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
        from ulffn_deploy.targets.onnx_source import describe_onnx

        describe_onnx(source, precision)
    resolved = target.resolve_options(options or {})
    out = Path(output) if output else target.default_output(source)
    if out.resolve() == source.resolve():
        raise UlffnError(f"output {out} would overwrite the source model", "choose another -o")
    return target.build(source, out, resolved, command or target.rebuild_command(source, out, resolved))


def load(path: str | os.PathLike[str], backend: str | None = None, **options: Any) -> Segmenter:
    """A Segmenter for ``path``: the target from its suffix, or ``backend`` when given. A file whose target
    cannot run here, or that is stale or incomplete (``Target.stale_problem``), is refused in one line."""
    target = target_named(backend) if backend else target_for_path(path)
    if target.addressed_by_url:
        return target.load(path, **options)  # type: ignore[arg-type]
    path = Path(path)
    if not path.is_file():
        raise UlffnError(f"{path}: no such model file")
    other = target.other_target_problem(path)
    if other:
        raise UlffnError(other)
    reason = target.unavailable_reason()
    if reason:
        raise UlffnError(f"cannot run {path.name} with {target.name}: {reason}; it runs on {target.runs_on} "
                         f"(checked here: {target.checked_here(path)})", target.install_hint or None)
    stale = target.stale_problem(path)
    if stale:
        raise UlffnError(stale)
    return target.load(path, **options)
