"""The TensorRT plugins' host-side conformance harness (plugins/tests/trt_conformance.cpp), driven
from real exports (torch-free; needs onnx and onnxruntime with the edgeforge kernel library).

`node_specs(model, feeds)` runs a plugin-mode ONNX model on ONNX Runtime and records, for every
`edgeforge::` node, its plugin fields (the node's attributes, as TensorRT's ONNX parser passes
them), its input shapes and ONNX Runtime's output shapes. `write_spec` writes them, with the
creators the exporter's nodes name (schema: op type, plugin_version, plugin_namespace), in the
harness's line format; `run` runs the harness on a plugin library. The harness's getOutputShapes
answers must then equal ONNX Runtime's shapes for every node the models emit.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeforge.ops import schema, shapes

PLUGIN_ATTRS = {"plugin_version", "plugin_namespace"}


@dataclass(frozen=True)
class NodeSpec:
    op: str
    fields: tuple[tuple[str, str, float | int], ...]  # (name, "i" | "f", value)
    inputs: tuple[tuple[int, ...], ...]
    outputs: tuple[tuple[int, ...], ...]

    def line(self) -> str:
        fields = " ".join(f"{n}:{k}={v!r}" for n, k, v in self.fields)
        shape = (lambda s: "x".join(str(d) for d in s) if s else "1")
        return (f"node {self.op} {fields} | " + " ".join(shape(s) for s in self.inputs) + " | "
                + " ".join(shape(s) for s in self.outputs)).replace("  ", " ")


def _fields(node: onnx.NodeProto) -> tuple[tuple[str, str, float | int], ...]:
    out = []
    for a in node.attribute:
        if a.name in PLUGIN_ATTRS:
            continue
        if a.type == onnx.AttributeProto.INT:
            out.append((a.name, "i", int(a.i)))
        elif a.type == onnx.AttributeProto.FLOAT:
            out.append((a.name, "f", float(np.float32(a.f))))
    return tuple(sorted(out))


def node_specs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[NodeSpec]:
    """Every edgeforge node of `model` with its fields, input shapes and ONNX Runtime's output shapes."""
    from edgeforge.ops import implementations as impls

    m = shapes.annotate(model)
    custom = [n for n in m.graph.node if n.domain == schema.DOMAIN]
    inits = {i.name: tuple(i.dims) for i in m.graph.initializer}
    have = {o.name for o in m.graph.output}
    typed = {vi.name: vi for vi in m.graph.value_info}
    wanted = []
    for n in custom:
        for name in list(n.input) + list(n.output):
            if name and name not in inits and name not in have and name not in wanted:
                wanted.append(name)
    for name in wanted:
        if name in {i.name for i in m.graph.input}:
            continue
        vi = typed.get(name)
        m.graph.output.append(vi if vi is not None else onnx.ValueInfoProto(name=name))
    sess = impls.ort_session(m.SerializeToString(), custom_ops=True)
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, feeds)))
    values.update({k: v for k, v in feeds.items()})
    shape_of = (lambda name: inits[name] if name in inits else tuple(int(d) for d in values[name].shape))
    return [NodeSpec(n.op_type, _fields(n), tuple(shape_of(i) for i in n.input if i),
                     tuple(shape_of(o) for o in n.output if o)) for n in custom]


def write_spec(path: Path, nodes: list[NodeSpec]) -> Path:
    """The harness's spec file: the exporter's creators, then each distinct node."""
    lines = [f"creator {op} {schema.PLUGIN_VERSION} {schema.PLUGIN_NAMESPACE}"
             for op in (schema.LINEAR_SCAN, schema.GATED_ATTENTION)]
    seen = set()
    for n in nodes:
        if n not in seen:
            seen.add(n)
            lines.append(n.line())
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def run(harness: Path, library: Path, spec: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the harness on a plugin library; returncode 0 when every check passed."""
    return subprocess.run([str(harness), str(library), str(spec)], capture_output=True, text=True, timeout=timeout)
