"""The model contract: how a segmentation network that is not ULFFN enters the toolkit (docs: README, "Your own model").

A small TOML file next to the model says where the model is (an ONNX file, or a PyTorch factory and a
weights file), what its input expects (size, channel order, mean/std, fit mode), what its output means
(logits or probabilities, softmax over C classes or one sigmoid channel, which class is the lesion) and
which nodes stay FP32 when it is converted to FP16 or quantized to INT8.

What each field may hold is one table, ``SCHEMA`` (a ``Field`` per field, a dict per TOML table), read
by one function, ``read_table``; the few rules that tie fields together (an ONNX file or a factory, a
sigmoid has no classes, ...) follow it in code. Every problem is a one-line UlffnError naming the field.
Matching FP32-keep rules against a graph is ``ulffn_deploy.keep_fp32``. This module needs only the
standard library.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ulffn_deploy.config import FIT_MODES, MAX_INPUT_SIZE, OUTPUT_STRIDE, Normalization
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.keep_fp32 import KEEP_PRECISIONS, KeepFp32

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

HINT = "see the README section 'Your own model' for a complete contract"


# -- the schema ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """What one field may hold. ``kind``: string, integer, number, boolean, numbers (``length`` finite
    numbers), integers (``length`` of them), strings (a non-empty list), table or tables (a list of
    tables). ``choices`` bounds a string (or each of a list of strings) or a number; ``minimum`` and
    ``maximum`` an integer or each number; ``step``: an integer must be a multiple of it; ``positive``:
    numbers above 0; ``why`` is added to a message about the field's value."""

    kind: str
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: int | None = None
    positive: bool = False
    length: int | None = None
    pattern: re.Pattern[str] | None = None
    upper: bool = False
    why: str = ""


FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
CHANNEL_ORDERS = ("RGB", "BGR")
OUTPUT_VALUES = ("logits", "probabilities")
ACTIVATIONS = ("softmax", "sigmoid")
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)

SCHEMA: dict[str, dict[str, Field]] = {
    "contract": {
        "name": Field("string"),
        "source": Field("table", required=True),
        "input": Field("table", required=True),
        "output": Field("table", required=True),
        "precision": Field("table", default={}),
    },
    "source": {
        "onnx": Field("string", why="an ONNX file, relative to the contract"),
        "factory": Field("string", pattern=FACTORY_PATTERN, why="is not 'package.module:function'"),
        "weights": Field("string"),
        "args": Field("table", default={}),
        "python_path": Field("string"),
    },
    "input": {
        "size": Field("integer", required=True, minimum=OUTPUT_STRIDE, maximum=MAX_INPUT_SIZE, step=OUTPUT_STRIDE),
        "channels": Field("string", default="RGB", choices=CHANNEL_ORDERS, upper=True),
        "mean": Field("numbers", default=DEFAULT_MEAN, length=3, why="(one per channel)"),
        "std": Field("numbers", default=DEFAULT_STD, length=3, positive=True, why="(one per channel)"),
        "scale": Field("number", default=1.0, choices=(1.0, 255.0),
                       why="mean/std refer to pixels in [0, 1] (scale 1) or [0, 255] (scale 255)"),
        "fit": Field("string", default="full", choices=FIT_MODES),
        "dynamic": Field("integers", length=2, minimum=OUTPUT_STRIDE, maximum=MAX_INPUT_SIZE, step=OUTPUT_STRIDE,
                         why="[min, max] height/width"),
    },
    "output": {
        "values": Field("string", default="logits", choices=OUTPUT_VALUES),
        "activation": Field("string", default="softmax", choices=ACTIVATIONS),
        "classes": Field("integer", minimum=2, why="softmax needs at least 2 classes (one channel: activation = 'sigmoid')"),
        "lesion_class": Field("integer", minimum=0),
    },
    "precision": {
        "keep_fp32": Field("tables", default=[]),
    },
    "keep_fp32": {
        "name": Field("string"),
        "op": Field("string"),
        "reads_input": Field("boolean", default=False),
        "feeds": Field("string"),
        "until": Field("string"),
        "precisions": Field("strings", default=KEEP_PRECISIONS, choices=KEEP_PRECISIONS, why="use fp16 and/or int8"),
        "reason": Field("string", default="kept FP32 by the model contract"),
    },
}


def read_table(data: Any, table: str, where: str) -> dict[str, Any]:
    """``data`` checked against ``SCHEMA[table]``: every field's value (its default when absent)."""
    fields = SCHEMA[table]
    if not isinstance(data, Mapping):
        raise UlffnError(f"{where} must be a table, got {type(data).__name__}", HINT)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UlffnError(f"{where}: unknown field {unknown[0]!r}", f"known fields: {', '.join(sorted(fields))}")
    return {key: _value(data.get(key), spec, f"{where}.{key}") for key, spec in fields.items()}


def _value(value: Any, spec: Field, where: str) -> Any:
    if value is None:
        if spec.required:
            raise UlffnError(f"[{where}] is missing" if spec.kind == "table" else f"{where} is missing", HINT)
        return spec.default
    reader = _READERS[spec.kind]
    return reader(value, spec, where)


def _string(value: Any, spec: Field, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UlffnError(f"{where} must be a non-empty string, got {value!r}")
    value = value.upper() if spec.upper else value
    if spec.choices and value not in spec.choices:
        raise UlffnError(f"{where} {value!r} is not one of {', '.join(spec.choices)}")
    if spec.pattern and not spec.pattern.match(value):
        raise UlffnError(f"{where} {value!r} {spec.why}", HINT)
    return value


def _integer(value: Any, spec: Field, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UlffnError(f"{where} must be an integer, got {value!r}")
    if spec.step and (value % spec.step or (spec.minimum is not None and value < spec.minimum)):
        raise UlffnError(f"{where} {value} is not a positive multiple of {spec.step}",
                         f"use {max(spec.step, value - value % spec.step)}")
    if spec.minimum is not None and value < spec.minimum:
        raise UlffnError(f"{where} {value} is below {spec.minimum:g}" + (f": {spec.why}" if spec.why else ""))
    if spec.maximum is not None and value > spec.maximum:
        raise UlffnError(f"{where} {value} is above {spec.maximum:g}, the largest the toolkit allocates for")
    return value


def _number(value: Any, spec: Field, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UlffnError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UlffnError(f"{where} is {value}, not a finite number")
    if spec.positive and value <= 0:
        raise UlffnError(f"{where} {value:g} must be positive")
    if spec.choices and float(value) not in spec.choices:
        raise UlffnError(f"{where} {value:g}: {spec.why}")
    return float(value)


def _boolean(value: Any, spec: Field, where: str) -> bool:
    if not isinstance(value, bool):
        raise UlffnError(f"{where} must be true or false, got {value!r}")
    return value


def _list(value: Any, spec: Field, where: str) -> list[Any]:
    if not isinstance(value, list) or (spec.length is not None and len(value) != spec.length):
        count = f"{spec.length} " if spec.length else "a list of "
        raise UlffnError(f"{where} must be {count}{spec.kind} {spec.why}, got {value!r}".replace("  ", " ").rstrip())
    return value


def _numbers(value: Any, spec: Field, where: str) -> tuple[float, ...]:
    numbers = _list(value, spec, where)
    return tuple(_number(item, spec, where) for item in numbers)


def _integers(value: Any, spec: Field, where: str) -> tuple[int, ...]:
    if value is False:
        return spec.default
    return tuple(_integer(item, spec, where) for item in _list(value, spec, where))


def _strings(value: Any, spec: Field, where: str) -> tuple[str, ...]:
    items = _list(value, spec, where)
    if not items:
        raise UlffnError(f"{where} is empty: {spec.why}")
    bad = [item for item in items if not isinstance(item, str) or (spec.choices and item not in spec.choices)]
    if bad:
        raise UlffnError(f"{where}: {bad} ({spec.why})" if spec.why else f"{where} must be a list of strings, got {value!r}")
    return tuple(items)


def _table(value: Any, spec: Field, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UlffnError(f"{where} must be a table, got {type(value).__name__}", HINT)
    return value


def _tables(value: Any, spec: Field, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        raise UlffnError(f"{where}: expected a list of rules, got {type(value).__name__}", HINT)
    return [_table(item, spec, f"{where}[{index}]") for index, item in enumerate(value)]


_READERS = {"string": _string, "integer": _integer, "number": _number, "boolean": _boolean, "numbers": _numbers,
            "integers": _integers, "strings": _strings, "table": _table, "tables": _tables}


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

    @property
    def runs_code(self) -> bool:
        """A factory source imports and calls Python code named by the contract; an ONNX source runs none."""
        return self.factory is not None


@dataclass(frozen=True)
class InputSpec:
    size: int
    channels: str = "RGB"
    mean: tuple[float, float, float] = DEFAULT_MEAN  # in the model's channel order
    std: tuple[float, float, float] = DEFAULT_STD
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
    top = read_table(data, "contract", "contract")
    precision = read_table(top["precision"], "precision", "precision")
    keep = rules_from_json(precision["keep_fp32"], "precision.keep_fp32")
    return ModelContract(top["name"] or (path.stem if path else "model"), _source(top["source"], base),
                         _input(top["input"]), _output(top["output"]), keep, path.resolve() if path else None)


def recorded_keep_rules(extra: Mapping[str, Any]) -> tuple[KeepFp32, ...] | None:
    """The FP32-keep rules an imported model records in its ONNX metadata (``extra``: the metadata's
    ``extra``); None for a ULFFN model, whose own rules apply."""
    recorded = extra.get("keep_fp32")
    if recorded is None:
        return None
    return rules_from_json(json.loads(recorded) if isinstance(recorded, str) else recorded, "ulffn.keep_fp32")


def rules_from_json(data: Any, where: str = "keep_fp32") -> tuple[KeepFp32, ...]:
    """FP32-keep rules from a contract's ``precision.keep_fp32`` or the ``ulffn.keep_fp32`` metadata."""
    rules = _tables(data, SCHEMA["precision"]["keep_fp32"], where)
    return tuple(_keep_rule(rule, f"{where}[{index}]") for index, rule in enumerate(rules))


def _keep_rule(data: Mapping[str, Any], where: str) -> KeepFp32:
    rule = KeepFp32(**read_table(data, "keep_fp32", where))
    if not (rule.name or rule.op or rule.reads_input or rule.feeds):
        raise UlffnError(f"{where}: a rule needs at least one of name, op, reads_input, feeds", HINT)
    return rule


def _source(data: Mapping[str, Any], base: Path) -> Source:
    fields = read_table(data, "source", "source")
    onnx, factory, weights = fields["onnx"], fields["factory"], fields["weights"]
    if bool(onnx) == bool(factory):
        raise UlffnError("source: give either onnx = FILE or factory = 'package.module:function' with weights", HINT)
    if onnx:
        if "weights" in data or "args" in data:
            raise UlffnError("source: weights and args belong to a PyTorch factory, not to an ONNX source", HINT)
        return Source(onnx=_existing(base, onnx, "source.onnx"))
    if not weights:
        raise UlffnError("source.weights: missing (a state_dict file, loaded with torch.load(weights_only=True))", HINT)
    folder = fields["python_path"]
    return Source(factory=factory, weights=_existing(base, weights, "source.weights"), args=dict(fields["args"]),
                  python_path=(base / folder).resolve() if folder else None)


def _input(data: Mapping[str, Any]) -> InputSpec:
    fields = read_table(data, "input", "input")
    size, dynamic = fields["size"], fields["dynamic"]
    if dynamic and not dynamic[0] <= size <= dynamic[1]:
        raise UlffnError(f"input.dynamic {list(dynamic)}: need min <= size ({size}) <= max")
    return InputSpec(size, fields["channels"], fields["mean"], fields["std"], fields["scale"], fields["fit"], dynamic)


def _output(data: Mapping[str, Any]) -> OutputSpec:
    fields = read_table(data, "output", "output")
    values, activation, classes, lesion = (fields[key] for key in ("values", "activation", "classes", "lesion_class"))
    if activation == "sigmoid":
        if classes is not None or lesion is not None:
            raise UlffnError("output: a sigmoid output is one lesion channel; classes and lesion_class are for softmax")
        return OutputSpec(values, activation, 1, 0)
    for key, value in (("classes", classes), ("lesion_class", lesion)):
        if value is None:
            raise UlffnError(f"output.{key} is missing", HINT)
    if lesion >= classes:
        raise UlffnError(f"output.lesion_class {lesion} is not one of the classes 0..{classes - 1}")
    return OutputSpec(values, activation, classes, lesion)


def _existing(base: Path, given: str, where: str) -> Path:
    path = (base / given).resolve()
    if path.is_dir():
        raise UlffnError(f"{where} {given!r} is a folder ({path}), not a file", HINT)
    if not path.is_file():
        raise UlffnError(f"{where}: {given} not found next to the contract ({path.parent})")
    return path
