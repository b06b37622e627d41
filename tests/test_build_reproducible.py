"""Reproducible artifacts: byte-identical exports and quantizations from separate processes,
onnxslim kept or not by a rule read from the graphs, and manifests that keep every step's record
when steps run on one artifact at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgeforge.artifacts import Manifest, sha256_file

ROOT = Path(__file__).resolve().parents[1]
# Every family's smallest variant (with its trained fixture weights where one exists; the
# pretrained family's weights come from a registry package, fetched once into the cache as in
# tests/test_pretrained.py).
FAMILIES = [
    (str(ROOT / "fixtures" / "efficientformer_v2_digits.yaml"), "fixtures/efficientformer_v2_digits.pt"),
    ("fmvit_tiny", "fixtures/fmvit_tiny.pt"),
    ("rmt_tiny", "fixtures/rmt_tiny.pt"),
    ("sit_tiny", "fixtures/sit_tiny.pt"),
    ("trecvit_tiny", "fixtures/trecvit_tiny.pt"),
    ("token_filter_tiny", None),
    ("pretrained_mobilenetv2", None),
    ("efficientformer_v2_s0", None),  # the family's smallest registry variant, seeded random init
]

_EXPORT_ALL = textwrap.dedent("""
    import json, sys
    from edgeforge.export.pipeline import export_recipe
    from edgeforge.quant.pipeline import quantize_artifact
    out, families = sys.argv[1], json.loads(sys.argv[2])
    result = {}
    for i, (recipe, weights) in enumerate(families):
        r = export_recipe(recipe, out_dir=f"{out}/{i}", weights=weights)
        result[recipe] = {"sha256": r.entry["onnx"]["sha256"], "slim": r.entry["onnx"]["simplify"]["applied"]}
    q = quantize_artifact(f"{out}/0", calib="digits", method="minmax", num_samples=8, analyze=False,
                          simulate=False, show_progress=False)
    result["quantized"] = str(q.onnx_path) if hasattr(q, "onnx_path") else None
    print(json.dumps(result))
""")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "random"}


def test_two_processes_export_and_quantize_identical_bytes(tmp_path):
    """Two processes, run at the same time, export every family's smallest variant and quantize one
    with the same calibration set: the ONNX files are byte for byte the same."""
    fams = json.dumps(FAMILIES)
    procs = [subprocess.Popen([sys.executable, "-c", _EXPORT_ALL, str(tmp_path / f"run{k}"), fams], cwd=ROOT,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in (0, 1)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    a, b = outs
    for recipe, _ in FAMILIES:
        assert a[recipe]["sha256"] == b[recipe]["sha256"], recipe
        assert a[recipe]["slim"] is True, recipe  # these graphs are only folded and pruned by onnxslim
    for i in range(len(FAMILIES)):
        assert sha256_file(tmp_path / "run0" / str(i) / "fp32" / "model.onnx") == \
            sha256_file(tmp_path / "run1" / str(i) / "fp32" / "model.onnx")
    q0, q1 = (tmp_path / f"run{k}" / "0" / "int8-minmax" / "model.onnx" for k in (0, 1))
    assert q0.is_file() and sha256_file(q0) == sha256_file(q1)


def _graph(ops: list[str]) -> onnx.ModelProto:
    nodes, prev = [], "x"
    for i, op in enumerate(ops):
        nodes.append(helper.make_node(op, [prev], [f"t{i}"], name=f"n{i}"))
        prev = f"t{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4])])
    return helper.make_model(g)


def test_simplify_decision_is_read_from_the_graphs():
    from edgeforge.export.simplify import decide

    raw = _graph(["Identity", "Relu", "Identity", "Sigmoid"])
    kept = decide(raw, _graph(["Relu", "Sigmoid"]))
    assert kept.applied and kept.nodes_before == 4 and kept.nodes_after == 2 and "kept" in kept.reason
    grown = decide(raw, _graph(["Relu", "Relu", "Sigmoid"]))  # a rewrite into more Relu nodes
    assert not grown.applied and grown.grown_ops == {"Relu": [1, 2]} and "Relu 1->2" in grown.reason
    new_op = decide(raw, _graph(["Gemm"]))  # a Gemm that no MatMul went into
    assert not new_op.applied and "Gemm" in new_op.grown_ops
    mm = _graph(["Identity", "MatMul", "Add", "MatMul", "Add"])
    fused = decide(mm, _graph(["Reshape", "Gemm", "Reshape", "Gemm"]))  # what ORT's MatMulAddFusion does too
    assert fused.applied and fused.grown_ops == {"Gemm": [0, 2], "Reshape": [0, 2]}
    # the same graphs give the same answer, every time
    assert all(decide(raw, _graph(["Relu", "Sigmoid"])).applied for _ in range(5))


def test_manifest_records_from_concurrent_writers_all_kept(tmp_path):
    """40 steps recorded at once by threads, each with its own Manifest object read before any
    record: none is lost, and set() keys survive others' records."""
    (tmp_path / "f").mkdir()
    files = []
    for i in range(40):
        f = tmp_path / "f" / f"{i}.bin"
        f.write_bytes(bytes([i]) * 10)
        files.append(f)
    objs = [Manifest(tmp_path) for _ in range(40)]
    objs[0].set("recipe", "r0")
    barrier = threading.Barrier(8)

    def work(k):
        barrier.wait()
        for i in range(k, 40, 8):
            objs[i].record(f"step-{i}", {"command": f"c{i}"}, files=[files[i]])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = Manifest(tmp_path)
    assert sorted(m.steps) == sorted(f"step-{i}" for i in range(40))
    assert m.data["recipe"] == "r0"
    assert m.steps["step-7"]["files"] == {"f/7.bin": sha256_file(files[7])}


@pytest.fixture(scope="module")
def digits_art(tmp_path_factory):
    from edgeforge.export.pipeline import export_recipe

    out = tmp_path_factory.mktemp("digits") / "art"
    export_recipe(FAMILIES[0][0], out_dir=out, weights=str(ROOT / FAMILIES[0][1]))
    return out


def test_two_quantize_processes_on_one_artifact_keep_both_records(digits_art):
    """`edgeforge quantize` minmax and percentile on one artifact at the same time: both exit 0 and
    manifest.json has both steps, each with the sha256 of the files it wrote."""
    cmd = [sys.executable, "-m", "edgeforge.cli", "quantize", str(digits_art), "--calib", "digits",
           "--num-samples", "8", "--no-analysis", "--no-sim", "--force"]
    procs = [subprocess.Popen(cmd + ["--method", m], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m in ("minmax", "percentile")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    steps = Manifest(digits_art).steps
    assert {"export", "int8-minmax", "int8-percentile"} <= set(steps)
    for name in ("int8-minmax", "int8-percentile"):
        onnx_rel = f"{name}/model.onnx"
        assert steps[name]["files"][onnx_rel] == sha256_file(digits_art / onnx_rel)
        assert f"{name}/quant.json" in steps[name]["files"]
