"""The ONNX node contract of the custom ops (torch-free): names, domain, attributes.

Every producer of `edgeforge::` nodes (the torch symbolic, the standalone graph builders) takes
its attributes from here, and the native kernels read exactly these names. TensorRT's ONNX parser
looks a node with an unknown op type up in the plugin registry by (op type, `plugin_version`,
`plugin_namespace`) and passes the remaining attributes to the creator as plugin fields.
"""

from __future__ import annotations

DOMAIN = "edgeforge"
OPSET_VERSION = 1
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "edgeforge"
LINEAR_SCAN = "LinearScan"
GATED_ATTENTION = "GatedAttention"


def plugin_attrs() -> dict:
    return {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}


def linear_scan_attrs(reverse: bool) -> dict:
    """Inputs (a, b[, h0]); outputs (h, h_last). `reverse` 0/1."""
    return {**plugin_attrs(), "reverse": int(bool(reverse))}


def gated_attention_attrs(scale: float, causal: bool, has_bias: bool, has_log_f: bool) -> dict:
    """Inputs (q, k, v[, bias][, log_f]) in that order, the optional ones present as the flags say.

    Flags instead of empty-name inputs, because TensorRT's parser does not accept omitted inputs in
    the middle of a plugin node.
    """
    return {**plugin_attrs(), "scale": float(scale), "causal": int(bool(causal) or bool(has_log_f)),
            "has_bias": int(bool(has_bias)), "has_log_f": int(bool(has_log_f))}
