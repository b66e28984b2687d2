"""FP32-keep rules: which ONNX nodes stay FP32 when a model is converted to FP16 or quantized to INT8.

A rule is data (``KeepFp32``): ULFFN's own rules are ``ULFFN_KEEP_FP32``, an imported model's contract
gives its own (``ulffn_deploy.contract`` reads them from TOML and JSON). ``keep_fp32_nodes`` matches
rules against a graph; export (FP16), import-model and calibrate (INT8) use it. This module needs only
the standard library: rules match nodes of any ONNX-like graph (objects with ``node``, ``input`` and
``initializer``; nodes with ``name``, ``op_type``, ``input``, ``output``) without importing onnx.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

KEEP_PRECISIONS = ("fp16", "int8")


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


def kept_nodes(graph: Any, rules: Sequence[KeepFp32] | None, precision: str) -> dict[str, str]:
    """``keep_fp32_nodes`` with a model's own ``rules``, or ULFFN's when it has none (None)."""
    return keep_fp32_nodes(graph, ULFFN_KEEP_FP32 if rules is None else rules, precision)


def rules_to_json(rules: Sequence[KeepFp32]) -> list[dict[str, Any]]:
    return [rule.to_dict() for rule in rules]
