"""The model contract: how a segmentation network that is not ULFFN enters the toolkit (docs: README, "Your own model").

A small TOML file next to the model says where the model is (an ONNX file, or a PyTorch factory and a
weights file), what its input expects (size, channel order, mean/std, fit mode), what its output means
(logits or probabilities, softmax over C classes or one sigmoid channel, which class is the lesion) and
which nodes stay FP32 when it is converted to FP16 or quantized to INT8. Every problem is a one-line
UlffnError naming the field. ULFFN's own FP32-keep rules are data here too (``ULFFN_KEEP_FP32``).

This module needs only the standard library: rules match nodes of any ONNX-like graph (objects with
``node``, ``input``; nodes with ``name``, ``op_type``, ``input``, ``output``) without importing onnx.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ulffn_deploy.config import FIT_MODES, OUTPUT_STRIDE, Normalization
from ulffn_deploy.errors import UlffnError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CHANNEL_ORDERS = ("RGB", "BGR")
OUTPUT_VALUES = ("logits", "probabilities")
ACTIVATIONS = ("softmax", "sigmoid")
KEEP_PRECISIONS = ("fp16", "int8")
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
HINT = "see the README section 'Your own model' for a complete contract"


@dataclass(frozen=True)
class KeepFp32:
    """One rule naming ONNX nodes that stay FP32. Every given condition must hold for a node to match:
    ``name`` a glob on node names, ``op`` the op type, ``reads_input`` (the node reads the graph input),
    ``feeds`` (one of its outputs is read by a node of that op type). ``until``: of the matched nodes,
    keep only those on the way to (and including) nodes of that op type, e.g. an attention block up to
    its Sigmoid. ``precisions`` says where the rule applies."""

    name: str | None = None
    op: str | None = None
    reads_input: bool = False
    feeds: str | None = None
    until: str | None = None
    precisions: tuple[str, ...] = KEEP_PRECISIONS
    reason: str = ""

    def describe(self) -> str:
        parts = [f"name {self.name!r}" if self.name else "", f"op {self.op}" if self.op else "",
                 "reading the input" if self.reads_input else "", f"feeding {self.feeds}" if self.feeds else "",
                 f"until {self.until}" if self.until else ""]
        return ", ".join(part for part in parts if part)

    def to_dict(self) -> dict[str, Any]:
        return {key: (list(value) if isinstance(value, tuple) else value)
                for key, value in asdict(self).items() if value not in (None, False, "")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "keep_fp32") -> KeepFp32:
        _no_unknown(data, {"name", "op", "reads_input", "feeds", "until", "precisions", "reason"}, where)
        precisions = tuple(_strings(data.get("precisions", list(KEEP_PRECISIONS)), f"{where}.precisions"))
        rule = cls(
            name=_opt_str(data, "name", where), op=_opt_str(data, "op", where),
            reads_input=_bool(data, "reads_input", where), feeds=_opt_str(data, "feeds", where),
            until=_opt_str(data, "until", where), precisions=precisions,
            reason=_opt_str(data, "reason", where) or "kept FP32 by the model contract",
        )
        if not (rule.name or rule.op or rule.reads_input or rule.feeds):
            raise UlffnError(f"{where}: a rule needs at least one of name, op, reads_input, feeds", HINT)
        bad = [p for p in precisions if p not in KEEP_PRECISIONS]
        if bad or not precisions:
            raise UlffnError(f"{where}.precisions: {bad or precisions} (use fp16 and/or int8)", HINT)
        return rule


# ULFFN's rules, as data (docs: ULFFN's CAM statistics and the output softmax stay exact). FP16 keeps the
# CAM up to its Sigmoid (its x * w + x gating is full resolution and runs in FP16); INT8 keeps the whole
# CAM, the input unit (the first convolution, on the normalised image) and the head convolution.
ULFFN_CAM = "CAM: mean/variance statistics and attention weights stay FP32 (docs/model.md)"
ULFFN_KEEP_FP32: tuple[KeepFp32, ...] = (
    KeepFp32(name="*/cam/*", until="Sigmoid", precisions=("fp16",), reason=ULFFN_CAM),
    KeepFp32(name="*/cam/*", precisions=("int8",), reason=ULFFN_CAM),
    KeepFp32(op="Conv", reads_input=True, precisions=("int8",),
             reason="input unit: first convolution, on the normalised image"),
    KeepFp32(op="Conv", feeds="Softmax", precisions=("int8",), reason="head: final 1x1 convolution to the 2 class logits"),
    KeepFp32(op="Softmax", reason="softmax: the output probabilities"),
)


def _consumers(graph: Any) -> dict[str, list[Any]]:
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _matches(rule: KeepFp32, node: Any, inputs: set[str], readers: Mapping[str, list[Any]]) -> bool:
    if rule.name and not fnmatch.fnmatchcase(node.name.lower(), rule.name.lower()):
        return False
    if rule.op and node.op_type != rule.op:
        return False
    if rule.reads_input and not inputs.intersection(node.input):
        return False
    return not rule.feeds or any(r.op_type == rule.feeds for out in node.output for r in readers.get(out, []))


def _up_to(graph: Any, members: list[Any], until: str) -> list[Any]:
    """Of ``members``, the nodes of op ``until`` and their ancestors among ``members`` (all when there is none)."""
    roots = [node for node in members if node.op_type == until]
    if not roots:
        return members
    allowed = {node.name for node in members}
    made_by = {out: node for node in graph.node for out in node.output}
    seen: dict[str, Any] = {}
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node.name in seen or node.name not in allowed:
            continue
        seen[node.name] = node
        stack.extend(made_by[i] for i in node.input if i in made_by)
    return list(seen.values())


def rule_nodes(graph: Any, rule: KeepFp32) -> list[str]:
    """Names of the nodes of ``graph`` that ``rule`` keeps in FP32."""
    initializers = {init.name for init in graph.initializer}
    inputs = {value.name for value in graph.input if value.name not in initializers}
    readers = _consumers(graph)
    members = [node for node in graph.node if node.name and _matches(rule, node, inputs, readers)]
    if rule.until:
        members = _up_to(graph, members, rule.until)
    return sorted(node.name for node in members)


def keep_fp32_nodes(graph: Any, rules: Iterable[KeepFp32], precision: str) -> dict[str, str]:
    """{node name: reason} for every node the rules that apply to ``precision`` keep in FP32 (first rule wins)."""
    kept: dict[str, str] = {}
    for rule in rules:
        if precision in rule.precisions:
            for name in rule_nodes(graph, rule):
                kept.setdefault(name, rule.reason)
    return kept


def rules_to_json(rules: Sequence[KeepFp32]) -> list[dict[str, Any]]:
    return [rule.to_dict() for rule in rules]


def rules_from_json(data: Any, where: str = "keep_fp32") -> tuple[KeepFp32, ...]:
    if not isinstance(data, list):
        raise UlffnError(f"{where}: expected a list of rules, got {type(data).__name__}", HINT)
    return tuple(KeepFp32.from_dict(_table(item, f"{where}[{i}]"), f"{where}[{i}]") for i, item in enumerate(data))


# -- the contract ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """An ONNX file, or a PyTorch ``package.module:factory`` (called with ``args``) and its weights file."""

    onnx: Path | None = None
    factory: str | None = None
    weights: Path | None = None
    args: dict[str, Any] = field(default_factory=dict)
    python_path: Path | None = None  # folder put on sys.path to import the factory's package

    @property
    def kind(self) -> str:
        return "onnx" if self.onnx else "pytorch"

    @property
    def file(self) -> Path:
        """The file whose sha256 identifies the model: the ONNX file or the weights."""
        return self.onnx if self.onnx is not None else Path(str(self.weights))


@dataclass(frozen=True)
class InputSpec:
    size: int
    channels: str = "RGB"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # in the model's channel order
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: float = 1.0  # mean/std refer to pixel values in [0, scale]
    fit: str = "full"
    dynamic: tuple[int, int] | None = None  # min and max height/width the graph accepts

    def normalization(self) -> Normalization:
        """The toolkit's normalisation (RGB order, pixel values in [0, 1]) that feeds this model."""
        step = -1 if self.channels == "BGR" else 1
        mean = tuple(value / self.scale for value in self.mean[::step])
        std = tuple(value / self.scale for value in self.std[::step])
        return Normalization(mean=mean, std=std)  # type: ignore[arg-type]


@dataclass(frozen=True)
class OutputSpec:
    values: str = "logits"
    activation: str = "softmax"
    classes: int = 2
    lesion_class: int = 1

    @property
    def channels(self) -> int:
        return 1 if self.activation == "sigmoid" else self.classes


@dataclass(frozen=True)
class ModelContract:
    """A validated contract; paths are absolute (resolved against the contract file's folder)."""

    name: str
    source: Source
    input: InputSpec
    output: OutputSpec
    keep_fp32: tuple[KeepFp32, ...] = ()
    path: Path | None = None

    def describe(self) -> dict[str, Any]:
        """What the artifacts' metadata records about the model (JSON-ready, no paths of this machine)."""
        return {
            "name": self.name, "source": self.source.kind,
            "source_file": self.source.file.name, "factory": self.source.factory,
            "input": {"channels": self.input.channels, "mean": list(self.input.mean), "std": list(self.input.std),
                      "scale": self.input.scale, "dynamic": list(self.input.dynamic) if self.input.dynamic else None},
            "output": asdict(self.output),
        }


def load_contract(path: str | os.PathLike[str]) -> ModelContract:
    """Read and validate a contract file; every problem is a one-line UlffnError naming the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UlffnError(f"{path}: no such model contract", HINT) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UlffnError(f"{path}: unreadable ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UlffnError(f"{path}: not valid TOML ({exc})", HINT) from exc
    try:
        return parse_contract(data, path.resolve().parent, path)
    except UlffnError as exc:
        raise UlffnError(f"{path}: {exc.message}", exc.hint) from exc


def parse_contract(data: Mapping[str, Any], base: Path, path: Path | None = None) -> ModelContract:
    """A contract from its TOML tables; relative paths are taken from ``base``."""
    _no_unknown(data, {"name", "source", "input", "output", "precision"}, "contract")
    name = _opt_str(data, "name", "contract") or (path.stem if path else "model")
    precision = _table(data.get("precision", {}), "precision")
    _no_unknown(precision, {"keep_fp32"}, "precision")
    keep = rules_from_json(precision.get("keep_fp32", []), "precision.keep_fp32")
    return ModelContract(name, _source(_table(data.get("source"), "source"), base),
                         _input(_table(data.get("input"), "input")), _output(_table(data.get("output"), "output")),
                         keep, path.resolve() if path else None)


def _source(data: Mapping[str, Any], base: Path) -> Source:
    _no_unknown(data, {"onnx", "factory", "weights", "args", "python_path"}, "source")
    onnx, factory, weights = (_opt_str(data, key, "source") for key in ("onnx", "factory", "weights"))
    if bool(onnx) == bool(factory):
        raise UlffnError("source: give either onnx = FILE or factory = 'package.module:function' with weights", HINT)
    if onnx:
        if "weights" in data or "args" in data:
            raise UlffnError("source: weights and args belong to a PyTorch factory, not to an ONNX source", HINT)
        return Source(onnx=_existing(base / onnx, "source.onnx"))
    if not FACTORY_PATTERN.match(factory or ""):
        raise UlffnError(f"source.factory {factory!r} is not 'package.module:function'", HINT)
    if not weights:
        raise UlffnError("source.weights: missing (a state_dict file, loaded with torch.load(weights_only=True))", HINT)
    folder = _opt_str(data, "python_path", "source")
    return Source(factory=factory, weights=_existing(base / weights, "source.weights"),
                  args=dict(_table(data.get("args", {}), "source.args")),
                  python_path=(base / folder).resolve() if folder else None)


def _input(data: Mapping[str, Any]) -> InputSpec:
    _no_unknown(data, {"size", "channels", "mean", "std", "scale", "fit", "dynamic"}, "input")
    size = _int(data, "size", "input", required=True)
    if size <= 0 or size % OUTPUT_STRIDE:
        raise UlffnError(f"input.size {size} is not a positive multiple of {OUTPUT_STRIDE}",
                         f"use {max(OUTPUT_STRIDE, size - size % OUTPUT_STRIDE)}")
    channels = str(data.get("channels", "RGB")).upper()
    _choice(channels, CHANNEL_ORDERS, "input.channels")
    scale = _number(data.get("scale", 1.0), "input.scale")
    if scale not in (1.0, 255.0):
        raise UlffnError(f"input.scale {scale:g}: mean/std refer to pixels in [0, 1] (scale 1) or [0, 255] (scale 255)")
    mean, std = (_triple(data.get(key, default), f"input.{key}")
                 for key, default in (("mean", InputSpec.mean), ("std", InputSpec.std)))
    if min(std) <= 0:
        raise UlffnError(f"input.std {list(std)} must be positive")
    fit = str(data.get("fit", "full"))
    _choice(fit, FIT_MODES, "input.fit")
    return InputSpec(size, channels, mean, std, scale, fit, _dynamic(data.get("dynamic"), size))


def _dynamic(value: Any, size: int) -> tuple[int, int] | None:
    if value is None or value is False:
        return None
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise UlffnError(f"input.dynamic {value!r}: give [min, max] height/width, e.g. [{size // 2}, {size * 2}]")
    low, high = value
    if not OUTPUT_STRIDE <= low <= size <= high or low % OUTPUT_STRIDE or high % OUTPUT_STRIDE:
        raise UlffnError(f"input.dynamic {value}: need min <= size ({size}) <= max, multiples of {OUTPUT_STRIDE}")
    return low, high


def _output(data: Mapping[str, Any]) -> OutputSpec:
    _no_unknown(data, {"values", "activation", "classes", "lesion_class"}, "output")
    values = str(data.get("values", "logits"))
    _choice(values, OUTPUT_VALUES, "output.values")
    activation = str(data.get("activation", "softmax"))
    _choice(activation, ACTIVATIONS, "output.activation")
    if activation == "sigmoid":
        if any(key in data for key in ("classes", "lesion_class")):
            raise UlffnError("output: a sigmoid output is one lesion channel; classes and lesion_class are for softmax")
        return OutputSpec(values, activation, 1, 0)
    classes = _int(data, "classes", "output", required=True)
    lesion = _int(data, "lesion_class", "output", required=True)
    if classes < 2:
        raise UlffnError(f"output.classes {classes}: softmax needs at least 2 classes (one channel: activation = 'sigmoid')")
    if not 0 <= lesion < classes:
        raise UlffnError(f"output.lesion_class {lesion} is not one of the classes 0..{classes - 1}")
    return OutputSpec(values, activation, classes, lesion)


# -- field helpers --------------------------------------------------------------------------------------

def _table(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        raise UlffnError(f"[{where}] is missing", HINT)
    if not isinstance(value, Mapping):
        raise UlffnError(f"{where} must be a table, got {type(value).__name__}", HINT)
    return value


def _no_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise UlffnError(f"{where}: unknown field {unknown[0]!r}", f"known fields: {', '.join(sorted(known))}")


def _opt_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise UlffnError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def _bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise UlffnError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, where: str, required: bool = False) -> int:
    value = data.get(key)
    if value is None and required:
        raise UlffnError(f"{where}.{key} is missing", HINT)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UlffnError(f"{where}.{key} must be an integer, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UlffnError(f"{where} must be a number, got {value!r}")
    return float(value)


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise UlffnError(f"{where} must be 3 numbers (one per channel), got {value!r}")
    return tuple(_number(v, where) for v in value)  # type: ignore[return-value]


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UlffnError(f"{where} must be a list of strings, got {value!r}")
    return value


def _choice(value: str, allowed: Sequence[str], where: str) -> None:
    if value not in allowed:
        raise UlffnError(f"{where} {value!r} is not one of {', '.join(allowed)}")


def _existing(path: Path, where: str) -> Path:
    if not path.is_file():
        raise UlffnError(f"{where}: {path.name} not found next to the contract ({path.parent})")
    return path.resolve()
