"""How much top-1 agreement with FP32 the photo-crop evaluation allows at all.

    .venv/bin/python benchmarks/photo_eval_ceiling.py [--model mobilenetv2] [--int8 PATH ...]
        [--eval-count 200] [--eval-seed 2024] [--noise 1e-3]

The real-model rows of quant_accuracy.py count how often an INT8 model gives its FP32 model's
top-1 class on random crops of the bundled photos. Those crops carry no labels, and many of them
(a patch of wall, of sky) are near ties for an ImageNet classifier: the FP32 top-1 beats the
runner-up by a hair, and any perturbation of the computation flips them. This script measures
that ceiling on the same crops as quant_accuracy.py (ONNX Runtime unless said otherwise):
- FP32 on OpenVINO against FP32 on ONNX Runtime (summation order only);
- FP32 with Gaussian input noise of `--noise` (normalised units; one 8-bit pixel step is about
  0.017 after ImageNet normalisation);
- the FP32 softmax margin (top-1 minus top-2 probability) quantiles, and how many crops are
  "decided" (margin >= photo_eval.DECIDED_MARGIN);
- for each INT8 QDQ model given (default: the benchmark cache's minmax, entropy and qhyvit
  models): the model as is (integer kernels and float emulation), and the same model with its
  activation quantizers removed (weights-only: what the 8-bit weights alone cost), with top-1
  agreement, KL and agreement on decided crops, and the margins of the crops it flips.
Writes benchmarks/results/photo_eval_ceiling.json with the CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeforge.artifacts import write_json_atomic  # noqa: E402
from edgeforge.targets.host import cpu_record  # noqa: E402

REAL = {"mobilenetv2": "pretrained_mobilenetv2"}  # classifiers: the ceiling is about top-1 flips


def weights_only(src: Path, out: Path) -> Path:
    """`src` with every activation QuantizeLinear -> DequantizeLinear pair bypassed: the weights
    (and int32 biases) stay quantized, activations run in float."""
    import onnx

    m = onnx.load(str(src))
    g = m.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    rename, drop = {}, set()
    for n in g.node:
        if n.op_type != "DequantizeLinear" or n.input[0] in inits:
            continue
        q = producer.get(n.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in inits:
            rename[n.output[0]] = q.input[0]
            drop.update({id(n), id(q)})
    keep = [n for n in g.node if id(n) not in drop]
    for n in keep:
        for i, t in enumerate(n.input):
            n.input[i] = rename.get(t, t)
    for o in g.output:
        o.name = rename.get(o.name, o.name)
    del g.node[:]
    g.node.extend(keep)
    onnx.save(m, str(out))
    return out


def margins(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def main(argv: list[str] | None = None) -> int:
    from edgeforge.bench import photo_eval as pe
    from edgeforge.data.preprocess import Preprocess
    from edgeforge.recipes import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenetv2", choices=sorted(REAL))
    ap.add_argument("--int8", nargs="*", default=None, help="INT8 QDQ models (default: the benchmark cache's "
                                                             "int8-minmax, int8-entropy, int8-qhyvit)")
    ap.add_argument("--eval-count", type=int, default=200)
    ap.add_argument("--eval-seed", type=int, default=2024)
    ap.add_argument("--noise", type=float, default=1e-3)
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "photo_eval_ceiling.json"))
    args = ap.parse_args(argv)
    recipe = REAL[args.model]
    art = Path(args.cache) / recipe
    fp32 = art / "fp32" / "model.onnx"
    if not fp32.is_file():
        ap.error(f"{fp32}: not exported; run benchmarks/quant_accuracy.py --models {args.model} first")
    int8 = [Path(p) for p in args.int8] if args.int8 else \
        [art / f"int8-{m}" / "model.onnx" for m in ("minmax", "entropy", "qhyvit")]
    int8 = [p for p in int8 if p.is_file()]
    pre = Preprocess.from_input_spec(load(recipe).spec.input)
    x, _ = pe.crops(pre, args.eval_count, args.eval_seed)
    ref = pe.run(fp32, x)
    m = margins(ref)
    res = {"cpu": cpu_record(), "model": args.model, "eval": f"natural crops seed {args.eval_seed} x{args.eval_count}",
           "fp32_margin_quantiles": {str(q): round(float(np.quantile(m, q)), 4) for q in (0.05, 0.1, 0.25, 0.5)},
           "decided_margin": pe.DECIDED_MARGIN, "decided_crops": int((m >= pe.DECIDED_MARGIN).sum()),
           "fp32_openvino": pe.agreement(ref, pe.run(fp32, x, "openvino"), "classifier")}
    noisy = x + np.random.default_rng(0).normal(0.0, args.noise, x.shape).astype(np.float32)
    res["fp32_input_noise"] = {"sigma": args.noise, **pe.agreement(ref, pe.run(fp32, noisy), "classifier")}
    res["int8"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in int8:
            name = p.parent.name
            row = {}
            for label, path, opts in (("kernels", p, {}), ("emulation", p, {"graph_optimization": "disable"}),
                                      ("weights_only", weights_only(p, Path(tmp) / f"{name}-w.onnx"),
                                       {"graph_optimization": "disable"})):
                out = pe.run(path, x, **opts)
                flips = out.argmax(1) != ref.argmax(1)
                row[label] = pe.agreement(ref, out, "classifier") | {
                    "flipped_margins": sorted(round(float(v), 4) for v in m[flips])}
            res["int8"][name] = row
            print(name, {k: (v["top1_agreement"], v["kl"]) for k, v in row.items()}, flush=True)
    print({k: res[k] for k in ("fp32_margin_quantiles", "decided_crops", "fp32_openvino", "fp32_input_noise")})
    write_json_atomic(Path(args.out), res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
