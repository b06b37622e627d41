"""What `edgeforge export` prints when it is done."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_export_summary(result, console: Console) -> None:
    e = result.entry
    if result.skipped:
        console.print(f"[green]up to date[/]: {result.onnx_path} (inputs unchanged; --force to export again)")
        return
    p, o, m = e["parity"], e["onnx"], e["model"]
    t = Table(title=f"export {e['recipe']}", show_header=False, title_justify="left")
    t.add_row("onnx", f"{result.onnx_path} ({o['size_bytes'] / 1e6:.1f} MB, opset {o['opset']}, "
                      f"{o['nodes']} nodes, custom ops: {o['custom_ops']})")
    t.add_row("params / MACs", f"{m['params'] / 1e6:.2f} M / {m['macs'] / 1e9:.3f} G")
    for r in e["transforms"]:
        t.add_row(f"transform {r['name']}", f"{r['changed']} site(s), max abs err {r['max_abs_err']:.2e}")
    if o.get("nodes_before_transforms") is not None:
        t.add_row("graph nodes", f"{o['nodes_before_transforms']} before deploy transforms -> {o['nodes_raw']} after "
                                 f"-> {o['nodes']} after onnxslim")
    if o.get("operators_before_transforms") is not None:
        t.add_row("operators (no Constant)", f"{o['operators_before_transforms']} before deploy transforms -> "
                                             f"{o['operators_raw']} after")
    for c in o.get("custom_op_choices", []):
        t.add_row(f"custom ops auto: {c['op']} {c['kind']} {c['size']}",
                  f"{c['mode']} x{c['calls']} ({c['reason']})")
    s = o["simplify"]
    t.add_row("onnxslim", f"{'kept' if s['applied'] else 'not applied'}: {s['nodes_before']} -> "
                          f"{s['nodes_after']} nodes" + (f"; ORT {s['ort_ms_before']:.2f} -> {s['ort_ms_after']:.2f} ms"
                                                          if s.get("ort_ms_before") else "") + f" ({s['reason']})")
    t.add_row("parity (ORT CPU vs torch)", f"max abs err {p['max_abs_err']:.2e}, relative {p['rel_err']:.2e} "
                                          f"(tol {p['tol']:g}), cosine {p['cosine']:.7f} over {p['num_inputs']} inputs")
    t.add_row("weights", e["weights"]["path"] or e["weights"]["note"])
    console.print(t)
    console.print(f"[green]ok[/]: wrote {result.onnx_path} and {result.out_dir / 'manifest.json'}")
