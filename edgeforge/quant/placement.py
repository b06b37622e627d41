"""Where quantizers go in an FP32 ONNX graph, chosen so runtimes fuse them into int8 kernels.

Rules (ONNX Runtime's and OpenVINO's QDQ fusions decide them):
- Conv / MatMul / Gemm: every activation input (including both inputs of q@k^T and attn@v, and
  therefore softmax outputs), every weight (per-channel), and Conv bias as int32 (scale
  s_in * s_w). A Conv's output is quantized too: ONNX Runtime only forms QLinearConv when the
  output goes through QuantizeLinear, and an unfused Conv would dequantize its weights per call.
- Residual Add (two activation inputs), AveragePool / GlobalAveragePool / MaxPool and Concat are
  quantized (inputs and output) only when their output feeds a quantized op: that keeps the
  chain in int8 (QLinearAdd, QLinearAveragePool, ...) instead of adding Q/DQ pairs for nothing.
- Shape/index ops (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Identity) never get a
  quantizer: an input reached through them is quantized at its source (the runtime moves the
  DequantizeLinear past them), and integer tensors are never quantized.
- Optional: LayerNormalization inputs (FQ-ViT style simulation; no runtime fuses them).
- `keep_fp` layers keep float inputs and weights (matched by ONNX node name or torch module path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

COMPUTE = ("Conv", "MatMul", "Gemm")
CHAIN = ("Add", "AveragePool", "GlobalAveragePool", "MaxPool", "Concat")
PASS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")
NORMS = ("LayerNormalization",)


@dataclass
class ActSite:
    """An activation tensor that gets one QuantizeLinear -> DequantizeLinear pair."""

    tensor: str
    roles: set[str] = field(default_factory=set)
    # the [min, max] of a Clip (ReLU6) this quantizer follows: its range must lie inside, so that
    # ONNX Runtime drops the Clip (ClipQuantFusion) and fuses Conv + quantized output
    clip: tuple[float, float] | None = None


@dataclass
class WeightSite:
    node: str
    initializer: str
    axis: int | None  # output-channel axis of the weight tensor (None: per-tensor)
    bias: str | None = None  # Conv/Gemm bias initializer, quantized to int32
    act_input: str | None = None  # the activation tensor whose scale the bias scale uses


@dataclass
class Plan:
    acts: dict[str, ActSite]
    weights: list[WeightSite]
    layers: list[str]  # quantized compute nodes, graph order
    kept_fp: list[str]  # compute nodes left in float (--keep-fp)
    node_types: dict[str, str]

    def summary(self) -> dict:
        roles: dict[str, int] = {}
        for s in self.acts.values():
            for r in s.roles:
                roles[r] = roles.get(r, 0) + 1
        return {"activation_quantizers": len(self.acts), "weight_quantizers": len(self.weights),
                "quantized_layers": len(self.layers), "kept_fp": self.kept_fp, "roles": roles}


def module_path(node_name: str) -> str:
    """'/stages/stages.0/blocks/blocks.1/mlp/fc1/Conv' -> 'stages.0.blocks.1.mlp.fc1'."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) <= 1:
        return node_name
    parts = parts[:-1]
    # 'stages' followed by 'stages.0' is the ModuleList and its entry: keep only the entry
    keep = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    return ".".join(keep)


def layer_matches(node_name: str, pattern: str) -> bool:
    """A --keep-fp entry matches a node by exact ONNX name, by torch module path, or as a
    module-path prefix ('stages.3' keeps every layer of stage 3)."""
    if pattern == node_name:
        return True
    mp = module_path(node_name)
    return mp == pattern or mp.startswith(pattern + ".")


class GraphIndex:
    """Producers, consumers, initializers and float-ness of an ONNX graph."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            for i, t in enumerate(n.input):
                if t:
                    self.consumers.setdefault(t, []).append((n, i))
        self.graph_outputs = {o.name for o in g.output}
        self.graph_inputs = {i.name for i in g.input if i.name not in self.inits}
        self._elem_type: dict[str, int] | None = None

    @property
    def elem_type(self) -> dict[str, int]:
        """Tensor element types from shape inference (computed on first use: it is slow on big models)."""
        if self._elem_type is None:
            g = self.model.graph
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
                vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
            except Exception:  # noqa: BLE001 - best-effort; unknown types count as float
                vis = list(g.value_info) + list(g.input) + list(g.output)
            self._elem_type = {vi.name: vi.type.tensor_type.elem_type for vi in vis}
        return self._elem_type

    def is_float(self, t: str) -> bool:
        et = self.elem_type.get(t)
        return et in (None, 0, onnx.TensorProto.FLOAT)

    def is_const(self, t: str) -> bool:
        return t in self.inits

    def init_array(self, t: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[t])

    def source(self, t: str) -> str:
        """Walk back through shape ops whose output has one consumer: quantize at the source."""
        while True:
            p = self.producer.get(t)
            if p is None or p.op_type not in PASS or len(self.consumers.get(t, [])) != 1:
                return t
            src = p.input[0]
            if self.is_const(src) or not self.is_float(src):
                return t
            t = src

    def forward_consumers(self, t: str) -> list[onnx.NodeProto]:
        """Consumers of t, looking through shape ops."""
        out = []
        for n, _ in self.consumers.get(t, []):
            if n.op_type in PASS:
                out.extend(self.forward_consumers(n.output[0]))
            else:
                out.append(n)
        return out


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn float Constant nodes into initializers (so weights behind them can be quantized)."""
    g = model.graph
    moved = 0
    keep = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            arr = numpy_helper.to_array(n.attribute[0].t)
            g.initializer.append(numpy_helper.from_array(arr, n.output[0]))
            moved += 1
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return moved


def bypass_identities(model: onnx.ModelProto) -> int:
    """Remove Identity nodes (the TorchScript exporter aliases shared initializers through them):
    consumers read the Identity's input directly, so constants are visible as initializers."""
    g = model.graph
    outs = {o.name for o in g.output}
    alias = {}
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.output[0] not in outs:
            alias[n.output[0]] = n.input[0]
        else:
            keep.append(n)
    if not alias:
        return 0

    def root(t: str) -> str:
        while t in alias:
            t = alias[t]
        return t

    for n in keep:
        for i, t in enumerate(n.input):
            if t in alias:
                n.input[i] = root(t)
    del g.node[:]
    g.node.extend(keep)
    return len(alias)


def fuse_gelu(model: onnx.ModelProto) -> int:
    """Replace the exporter's erf GELU (Div, Erf, Add, Mul, Mul) by one com.microsoft.Gelu node.

    Same arithmetic. ONNX Runtime fuses this pattern itself on float graphs, but not once the
    GELU input comes from a DequantizeLinear shared by the Div and the Mul (it duplicates the
    DequantizeLinear first); unfused, the five float ops also block its NHWC int8 layout.
    Only for ONNX Runtime targets: `com.microsoft` ops are ORT's.
    """
    idx = GraphIndex(model)
    g = model.graph

    def const(t: str):
        return float(idx.init_array(t).ravel()[0]) if t in idx.inits and idx.init_array(t).size == 1 else None

    def only(t: str, op: str):
        c = idx.consumers.get(t, [])
        return c[0][0] if len(c) == 1 and c[0][0].op_type == op else None

    remove, n_fused = set(), 0
    new_nodes: dict[str, onnx.NodeProto] = {}
    for div in g.node:
        if div.op_type != "Div" or div.input[1] not in idx.inits:
            continue
        c = const(div.input[1])
        if c is None or abs(c - 2 ** 0.5) > 1e-4:
            continue
        x = div.input[0]
        erf = only(div.output[0], "Erf")
        add = erf and only(erf.output[0], "Add")
        if not add or const(add.input[1] if add.input[0] == erf.output[0] else add.input[0]) != 1.0:
            continue
        mul = only(add.output[0], "Mul")
        if not mul or x not in mul.input:
            continue
        mul2 = only(mul.output[0], "Mul")
        if not mul2 or const(mul2.input[1] if mul2.input[0] == mul.output[0] else mul2.input[0]) != 0.5:
            continue
        gelu = onnx.helper.make_node("Gelu", [x], [mul2.output[0]], name=div.name.rsplit("/", 1)[0] + "/Gelu",
                                     domain="com.microsoft")
        new_nodes[mul2.name] = gelu
        remove.update({div.name, erf.name, add.name, mul.name})
        n_fused += 1
    if not n_fused:
        return 0
    out = []
    for n in g.node:
        if n.name in remove:
            continue
        out.append(new_nodes.get(n.name, n))
    del g.node[:]
    g.node.extend(out)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return n_fused


def matmul_add_to_gemm(model: onnx.ModelProto) -> int:
    """Linear layers on (B, N, C) tokens: MatMul(x, W) + Add(b) -> Reshape, Gemm(bias), Reshape.

    Same sums. A Gemm with an int32 bias is one fused int8 kernel (QGemm) in ONNX Runtime, while
    ORT's own MatMul+Add fusion (which runs before its QDQ fusions) leaves a float Gemm that
    dequantizes its weights on every call. Needs static shapes (the Reshape targets are constants).
    """
    idx = GraphIndex(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - without shapes the pass does nothing
        return 0
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    g = model.graph
    n_done = 0
    new_order = []
    removed = set()
    for node in g.node:
        if node.name in removed:
            continue
        new_order.append(node)
        if node.op_type != "MatMul" or node.input[1] not in idx.inits or node.output[0] in idx.graph_outputs:
            continue
        w = idx.init_array(node.input[1])
        xs, ys = shapes.get(node.input[0]), shapes.get(node.output[0])
        cons = idx.consumers.get(node.output[0], [])
        if w.ndim != 2 or not xs or not ys or len(xs) < 3 or None in xs or None in ys or len(cons) != 1:
            continue
        add = cons[0][0]
        if add.op_type != "Add":
            continue
        b = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if b not in idx.inits or idx.init_array(b).shape != (w.shape[1],):
            continue
        base = node.name.rsplit("/", 1)[0] if "/" in node.name else node.name
        s_in, s_out = f"{base}_gemm_in_shape", f"{base}_gemm_out_shape"
        g.initializer.append(numpy_helper.from_array(np.asarray([-1, w.shape[0]], np.int64), s_in))
        g.initializer.append(numpy_helper.from_array(np.asarray(ys, np.int64), s_out))
        x2, y2 = f"{base}_gemm_in", f"{base}_gemm_out"
        new_order[-1] = onnx.helper.make_node("Reshape", [node.input[0], s_in], [x2], name=f"{base}/GemmReshapeIn")
        new_order.append(onnx.helper.make_node("Gemm", [x2, node.input[1], b], [y2], name=f"{base}/Gemm"))
        new_order.append(onnx.helper.make_node("Reshape", [y2, s_out], [add.output[0]], name=f"{base}/GemmReshapeOut"))
        removed.add(add.name)
        n_done += 1
    if n_done:
        del g.node[:]
        g.node.extend(new_order)
    return n_done


def fold_channel_scales(model: onnx.ModelProto) -> int:
    """Fold a per-channel constant Mul that follows a Conv (layer scale) into the Conv.

    Exact up to float rounding: conv(x, W)*g == conv(x, W*g) with bias b*g. Removing the Mul lets
    the Conv's quantized output feed the residual Add directly (QLinearConv -> QLinearAdd).
    """
    idx = GraphIndex(model)
    g = model.graph
    removed = []
    n_fold = 0
    for node in list(g.node):
        if node.op_type != "Conv" or node.input[1] not in idx.inits:
            continue
        cons = idx.consumers.get(node.output[0], [])
        if len(cons) != 1 or node.output[0] in idx.graph_outputs:
            continue
        mul, _ = cons[0]
        if mul.op_type != "Mul":
            continue
        other = mul.input[1] if mul.input[0] == node.output[0] else mul.input[0]
        if other not in idx.inits:
            continue
        w = idx.init_array(node.input[1])
        gam = idx.init_array(other).astype(np.float32)
        cout = w.shape[0]
        if gam.size == 1:
            gam = np.full(cout, float(gam.ravel()[0]), np.float32)
        elif gam.size == cout and gam.squeeze().ndim == 1 and (gam.ndim < 3 or gam.shape[-1] == gam.shape[-2] == 1):
            gam = gam.reshape(-1)
        else:
            continue
        if len(idx.consumers.get(node.input[1], [])) != 1:
            continue
        w2 = (w * gam.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        _replace_init(g, node.input[1], w2)
        if len(node.input) > 2 and node.input[2]:
            if len(idx.consumers.get(node.input[2], [])) != 1:
                continue
            _replace_init(g, node.input[2], (idx.init_array(node.input[2]) * gam).astype(np.float32))
        else:
            bname = node.input[1] + "_bias_folded"
            g.initializer.append(numpy_helper.from_array(np.zeros(cout, np.float32), bname))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = bname
        # the Conv now produces what the Mul produced
        node.output[0] = mul.output[0]
        removed.append(mul)
        n_fold += 1
    for m in removed:
        g.node.remove(m)
    return n_fold


def _replace_init(g: onnx.GraphProto, name: str, arr: np.ndarray) -> None:
    for i, init in enumerate(g.initializer):
        if init.name == name:
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, name))
            return
    raise KeyError(name)


def plan(model: onnx.ModelProto, keep_fp: list[str] = (), norm_inputs: bool = False,
         residual: bool = True) -> Plan:
    """Choose the activation and weight quantizers of `model` (see module docstring)."""
    idx = GraphIndex(model)
    acts: dict[str, ActSite] = {}
    weights: list[WeightSite] = []
    layers, kept = [], []
    types = {n.name: n.op_type for n in model.graph.node}
    unmatched = set(keep_fp)

    def add(t: str, role: str) -> None:
        if not t or idx.is_const(t) or not idx.is_float(t):
            return
        acts.setdefault(t, ActSite(t)).roles.add(role)

    for n in model.graph.node:
        if n.op_type not in COMPUTE:
            continue
        hits = [p for p in keep_fp if layer_matches(n.name, p)]
        if hits:
            kept.append(n.name)
            unmatched -= set(hits)
            continue
        if n.op_type == "Conv":
            act_slots, w_slot = [0], 1
        elif n.op_type == "Gemm":
            act_slots, w_slot = [0], 1
        else:
            act_slots, w_slot = [0, 1], None
            if idx.is_const(n.input[1]):
                act_slots, w_slot = [0], 1
        if w_slot is not None and not idx.is_const(n.input[w_slot]):
            act_slots.append(w_slot)  # a Gemm/Conv with a dynamic weight: quantize it as an activation
            w_slot = None
        if any(idx.is_const(n.input[s]) for s in act_slots):
            continue  # constant activation input (odd graph): leave the node in float
        srcs = []
        for s in act_slots:
            src = idx.source(n.input[s])
            add(src, "input")
            srcs.append(src)
        if w_slot is not None:
            w = idx.init_array(n.input[w_slot])
            if n.op_type == "Conv":
                axis = 0
            elif n.op_type == "Gemm":
                axis = 0 if _attr(n, "transB", 0) else 1
            else:
                # per-column scales on a 2-D B only: ORT's MatMulInteger kernels accept no other
                # per-channel layout (batched 3-D weights get one scale)
                axis = 1 if w.ndim == 2 else None
            bias = n.input[2] if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] and \
                idx.is_const(n.input[2]) else None
            # bias shared between nodes (the exporter dedups equal initializers) is fine: each
            # node gets its own int32 copy with its own scale
            weights.append(WeightSite(n.name, n.input[w_slot], axis, bias, srcs[0]))
        if n.op_type == "Conv" and n.output[0] not in idx.graph_outputs:
            out = n.output[0]
            # Conv -> Relu / Clip (ReLU6) -> Q: ONNX Runtime drops the activation when the quantized
            # range lies inside it (Relu/ClipQuantFusion) and OpenVINO folds it into the conv, so
            # quantize once after the activation; a quantizer before it would spend its levels on
            # values the activation throws away, and add a second rounding.
            cons = idx.consumers.get(out, [])
            clip = None
            if len(cons) == 1 and out not in idx.graph_outputs:
                act = cons[0][0]
                bounds = clip_bounds(act, idx) if act.op_type == "Clip" else None
                if act.op_type == "Relu" or (bounds is not None and bounds[0] <= 0.0 <= bounds[1]):
                    out, clip = act.output[0], bounds
            add(out, "output")
            if clip is not None and out in acts:
                acts[out].clip = clip
        layers.append(n.name)

    if unmatched:
        from edgeforge.errors import BadInput

        names = [n for n in layers + kept][:8]
        raise BadInput(f"--keep-fp {', '.join(sorted(unmatched))}: no Conv/MatMul/Gemm layer matches "
                       f"(use an ONNX node name or a module path such as {module_path(names[0]) if names else '...'}; "
                       f"e.g. {', '.join(module_path(x) for x in names[:4])})")

    # Chain ops: quantize when their output reaches a quantized op; iterate so chains of chain ops
    # (pool -> add -> conv) stay int8 end to end.
    quantized_nodes = {n.name for n in model.graph.node if n.name in layers}
    changed = True
    while changed:
        changed = False
        for n in model.graph.node:
            if n.op_type not in CHAIN or n.name in quantized_nodes:
                continue
            if n.op_type == "Add" and (not residual or any(idx.is_const(t) for t in n.input)):
                continue
            ins = [t for t in n.input if t and not idx.is_const(t)]
            if not ins or not all(idx.is_float(t) for t in ins) or not idx.is_float(n.output[0]):
                continue
            fwd = idx.forward_consumers(n.output[0])
            if not any(c.name in quantized_nodes for c in fwd):
                continue
            for t in ins:
                add(idx.source(t), "chain")
            add(n.output[0], "chain")
            quantized_nodes.add(n.name)
            changed = True
    if norm_inputs:
        for n in model.graph.node:
            if n.op_type in NORMS:
                add(idx.source(n.input[0]), "norm")
    return Plan(acts, weights, layers, kept, types)


def clip_bounds(node: onnx.NodeProto, idx: GraphIndex) -> tuple[float, float] | None:
    """A Clip's constant [min, max] (inputs since opset 11, attributes before); None if not constant."""
    lo, hi = _attr(node, "min", -np.inf), _attr(node, "max", np.inf)
    for slot, default in ((1, lo), (2, hi)):
        if len(node.input) > slot and node.input[slot]:
            t = node.input[slot]
            if t not in idx.inits:
                return None
            v = float(idx.init_array(t).ravel()[0])
        else:
            v = default
        if slot == 1:
            lo = v
        else:
            hi = v
    return float(lo), float(hi)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default
