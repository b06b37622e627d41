"""Bridge blocks of hybrid (convolution + attention) ViTs, found in the ONNX graph (Q-HyViT).

A bridge block is where the model turns from convolution to attention: its activations mix the
statistics of both (Q-HyViT, arXiv 2303.12557, problem 2), and Q-HyViT reconstructs the layers
inside it against the block's output instead of each layer's own output. Found from the graph
and the torch module paths the exporter writes into node names (`placement.module_path`):

- an attention block is the module owning a Softmax's residual Add: the shortest prefix of the
  Softmax's module path that directly owns an Add merging two activations made by different
  modules (`stages.3.blocks.4` for `stages.3.blocks.4.token_mixer/Softmax`; an attention-bias
  Add inside the token mixer does not count);
- it is a bridge when (a) the block before it (the module of the nearest preceding compute
  layer outside it) has no Softmax: conv -> attention, e.g. EfficientFormer's Flat + first Meta3D
  block; the shape ops between the two blocks (the Flat) belong to the bridge; only the first
  such block of a stage counts (blocks of a stage share the first path component(s)); or (b) it
  changes the spatial resolution of its input: attention downsampling (EfficientFormerV2's
  `stages.3.downsample`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from edgeforge.quant.placement import COMPUTE, GraphIndex, module_path


@dataclass
class Bridge:
    block: str  # module path of the attention block
    reason: str  # "conv->attention" or "attention downsampling"
    nodes: list[str] = field(default_factory=list)  # ONNX node names in the bridge, graph order
    layers: list[str] = field(default_factory=list)  # its compute layers (Conv/Gemm/MatMul)
    inputs: list[str] = field(default_factory=list)  # float tensors entering it from outside
    output: str = ""  # the block's output tensor (O in Q-HyViT's reconstruction loss)
    previous: str | None = None  # module path of the block before it

    def to_json(self) -> dict:
        return {"block": self.block, "reason": self.reason, "previous_block": self.previous,
                "layers": [module_path(n) for n in self.layers], "onnx_nodes": len(self.nodes),
                "inputs": self.inputs, "output": self.output}


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def _stage(path: str) -> str:
    """'stages.3.blocks.4' -> 'stages.3'; 'stages.1.2' -> 'stages.1'; 'blocks.4' -> 'blocks'."""
    parts = path.split(".")
    if len(parts) >= 2 and parts[1].isdigit():
        return ".".join(parts[:2])
    return parts[0]


def _spatial(shapes: dict, t: str) -> tuple | None:
    s = shapes.get(t)
    if not s or len(s) != 4 or None in s[2:]:
        return None
    return tuple(s[2:])


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in m.graph.node:  # shape inference stops at com.microsoft ops: Gelu keeps its shape as Relu does
        if n.domain == "com.microsoft" and n.op_type == "Gelu":
            n.domain, n.op_type = "", "Relu"
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - without shapes only rule (a) applies
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = dims
    return out


def find_bridges(model: onnx.ModelProto) -> list[Bridge]:
    """The bridge blocks of `model` (see the module docstring), in graph order."""
    idx = GraphIndex(model)
    nodes = list(model.graph.node)
    paths = [module_path(n.name) if "/" in n.name else "" for n in nodes]
    path_of = {n.name: p for n, p in zip(nodes, paths)}

    def merges(n: onnx.NodeProto) -> bool:
        # a residual / branch-merging Add: two activations made by different modules
        ins = [t for t in n.input if t and t not in idx.inits]
        if len(ins) != 2:
            return False
        src = [path_of.get(idx.producer[t].name, "") if t in idx.producer else "<input>" for t in ins]
        return src[0] != src[1]

    add_owners = {p for n, p in zip(nodes, paths) if n.op_type == "Add" and p and merges(n)}
    blocks: list[str] = []
    for n, p in zip(nodes, paths):
        if n.op_type != "Softmax" or not p:
            continue
        parts = p.split(".")
        owner = next((".".join(parts[:k]) for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in add_owners), None)
        if owner and owner not in blocks:
            blocks.append(owner)
    if not blocks:
        return []
    attn_blocks = set(blocks)
    shapes = _shapes(model)
    out: list[Bridge] = []
    stages_done: set[str] = set()
    for blk in blocks:
        pos = [i for i, p in enumerate(paths) if _under(p, blk)]
        first, last = pos[0], pos[-1]
        # the block before: the module of the nearest preceding compute layer outside this block
        prev_i = next((i for i in range(first - 1, -1, -1) if nodes[i].op_type in COMPUTE and paths[i]
                       and not _under(paths[i], blk)), None)
        prev_blk = None
        prev_has_attn = False
        if prev_i is not None:
            pp = paths[prev_i]
            owner = next((a for a in attn_blocks if _under(pp, a)), None)
            prev_has_attn = owner is not None
            # the previous block's module: the prefix of its path as deep as this block's path
            depth = len(blk.split("."))
            prev_blk = owner or ".".join(pp.split(".")[:depth])
        # inputs and output of the block's own nodes
        inside = set(pos)
        ins = _span_inputs(nodes, pos, idx)
        outs = [o for i in pos for o in nodes[i].output
                if o in idx.graph_outputs or any(j not in inside for j in
                                                 (nodes.index(c) for c, _ in idx.consumers.get(o, [])))]
        output = outs[-1] if outs else nodes[last].output[0]
        reason = None
        stage = _stage(blk)
        if prev_i is not None and not prev_has_attn and stage not in stages_done:
            reason = "conv->attention"
        else:
            sin = [_spatial(shapes, t) for t in ins]
            sout = _spatial(shapes, output)
            sin = [s for s in sin if s]
            if sout and sin and all(s[0] > sout[0] or s[1] > sout[1] for s in sin):
                reason = "attention downsampling"
        stages_done.add(stage)
        if reason is None:
            continue
        # the Flat: shape ops between the previous block's last compute layer and this block
        lo = first
        if reason == "conv->attention" and prev_i is not None:
            j = first - 1
            while j > prev_i and nodes[j].op_type not in COMPUTE and not (
                    prev_blk and paths[j] and _under(paths[j], prev_blk)):
                j -= 1
            lo = j + 1
        span = list(range(lo, first)) + pos
        names = [nodes[i].name for i in span]
        ins = _span_inputs(nodes, span, idx)
        out.append(Bridge(blk, reason, names, [nodes[i].name for i in span if nodes[i].op_type in COMPUTE],
                          ins, output, prev_blk))
    return out


def _span_inputs(nodes: list, positions: list[int], idx) -> list[str]:
    """The float activations the nodes at `positions` read from outside them, first use first."""
    produced = {o for i in positions for o in nodes[i].output}
    ins: list[str] = []
    for i in positions:
        for t in nodes[i].input:
            if t and t not in produced and t not in idx.inits and t not in ins and idx.is_float(t):
                ins.append(t)
    return ins
