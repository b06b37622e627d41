"""Latency measurement, memory, inputs, accuracy, compile and the `bench` command, on real
ONNX Runtime / OpenVINO sessions. No test asserts a timing (design.md): only structure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeforge.artifacts import Manifest
from edgeforge.bench import latency as lat
from edgeforge.bench.accuracy import evaluate, load_eval_set, sqnr_db, topk
from edgeforge.bench.inputs import make_feed, recipe_input, specs_from_manifest
from edgeforge.bench.memory import PeakMemory, rss_mb
from edgeforge.errors import BadInput
from edgeforge.runtimes import create_runner
from edgeforge.runtimes.base import TensorSpec
from test_bench_support import MEAN, SHAPE, STD

FAST = lat.Settings(warmup=2, warmup_time_s=0.0, iterations=20, block_size=5)


def test_measure_alternates_blocks(tiny_art):
    feed = {"input": np.zeros((1, *SHAPE), np.float32)}
    order = []

    with create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", threads=1) as a, \
            create_runner("onnxruntime", tiny_art / "int8-ort" / "model.onnx", threads=1) as b:
        for name, r in (("a", a), ("b", b)):
            real = r._infer

            def spy(f, _real=real, _name=name):
                order.append(_name)
                return _real(f)

            r._infer = spy
        samples = lat.measure({"a": a, "b": b}, {"a": feed, "b": feed}, FAST)
    timed = order[2 * FAST.warmup:]
    runs = [timed[i] for i in range(0, len(timed), FAST.block_size)]
    # Blocks of `block_size` calls, never call by call; order flips every round: a b b a a b ...
    assert all(len(set(timed[i:i + FAST.block_size])) == 1 for i in range(0, len(timed), FAST.block_size))
    assert runs[:4] == ["a", "b", "b", "a"]
    assert len(samples["a"].blocks) == len(samples["b"].blocks) >= 4
    assert samples["a"].interleaved_with == ["b"]


def test_summary_statistics_and_robust_noise():
    base = [1.0, 1.1, 0.9, 1.05, 0.95] * 8
    blocks = [base[i:i + 5] for i in range(0, 40, 5)]
    s = lat.Samples(times_ms=list(base), blocks=blocks)
    out = lat.summarize(s, batch=2)
    assert out["p50"] == pytest.approx(np.median(base))
    assert out["min"] == 0.9 and out["max"] == 1.1 and out["iterations"] == 40 and out["blocks"] == 8
    assert out["p50"] <= out["p90"] <= out["p95"] <= out["p99"] <= out["max"]
    assert out["throughput_per_s"] == pytest.approx(2000 / out["p50"])
    assert not out["noisy"]
    # One very slow block (another process woke up) must not blow up the stated noise.
    slow = [[5.0] * 5] + blocks[1:]
    s2 = lat.Samples(times_ms=[x for b in slow for x in b], blocks=slow)
    out2 = lat.summarize(s2)
    assert out2["noise_pct"] < 20 and out2["noisy"]
    assert "noisy run" in lat.noise_warning(out2)


def test_peak_memory_sees_an_allocation():
    assert rss_mb() > 0
    with PeakMemory() as mem:
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
        del block
    assert mem.delta_mb is not None and mem.delta_mb > 40
    if mem.resettable:
        assert mem.method.startswith("VmHWM after clear_refs reset")
        # the peak was reset on entry: the 64 MiB freed above does not count in the next window
        with PeakMemory() as again:
            np.ones(1024)
        assert again.delta_mb < 20
    else:
        assert "upper bound" in mem.method


def test_inputs_follow_the_recipe_spec(tiny_art):
    from edgeforge.artifacts import Manifest

    export = Manifest(tiny_art).step("export")
    specs = specs_from_manifest(export)
    spec = recipe_input(export)
    assert specs == [TensorSpec("input", (1, *SHAPE), "float32")] and spec["mean"] == MEAN
    feed = make_feed(specs + [TensorSpec("state", (None, 8), "float32")], spec, seed=1)
    x = feed["input"]
    pixels = x * np.asarray(STD, np.float32)[:, None, None] + np.asarray(MEAN, np.float32)[:, None, None]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert feed["state"].shape == (1, 8) and not feed["state"].any()
    np.testing.assert_array_equal(make_feed(specs, spec, seed=1)["input"], x)


def test_accuracy_metrics():
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05]])
    assert topk(scores, np.array([1, 1]), 1) == 50.0
    assert topk(scores, np.array([1, 1]), 2) == 100.0
    ref = np.array([1.0, 2.0, 3.0])
    assert sqnr_db(ref, ref + 0.01) == pytest.approx(10 * np.log10(14 / 3e-4))


def test_eval_sets_npz_uint8_and_image_folder(tmp_path):
    from PIL import Image

    spec = {"shape": SHAPE, "mean": MEAN, "std": STD, "layout": "NCHW", "name": "input"}
    imgs = np.random.default_rng(0).integers(0, 255, (4, 20, 24, 3), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", x=imgs, y=np.arange(4))
    ev = load_eval_set(tmp_path / "u8.npz", spec)
    assert ev.x.shape == (4, *SHAPE) and ev.x.dtype == np.float32 and list(ev.y) == [0, 1, 2, 3]
    for c, cls in enumerate(("cat", "dog")):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(imgs[c * 2 + (i % 2)]).save(tmp_path / "folder" / cls / f"{i}.png")
    ev = load_eval_set(tmp_path / "folder", spec)
    assert ev.x.shape == (6, *SHAPE) and list(ev.y) == [0, 0, 0, 1, 1, 1]
    assert len(load_eval_set(tmp_path / "folder", spec, limit=2).x) == 2
    with pytest.raises(BadInput, match="image folder"):
        load_eval_set(tmp_path / "missing.txt", spec)
    np.savez(tmp_path / "noy.npz", z=imgs)
    with pytest.raises(BadInput, match="needs an array `x`"):
        load_eval_set(tmp_path / "noy.npz", spec)


def test_evaluate_labels_and_agreement(tiny_art):
    ev = load_eval_set(tiny_art / "eval.npz", {"shape": SHAPE})
    feed = {"input": np.zeros((1, *SHAPE), np.float32)}
    with create_runner("onnxruntime", tiny_art / "int8-ort" / "model.onnx", threads=1) as q, \
            create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", threads=1) as f:
        res_fp32 = evaluate(f, ev, feed, "input")
        res = evaluate(q, ev, feed, "input", reference=f, reference_name="fp32")
    # The labels are the FP32 predictions on the first half and shifted on the second, and those
    # predictions are not one class (a constant predictor scores at most 12.5% top-1 on them).
    y = np.load(tiny_art / "eval.npz")["y"]
    assert len(set(y[:12].tolist())) >= 8 and max(np.bincount(y)) <= 3
    assert res_fp32["top1"] == 50.0 and res_fp32["top5"] >= 50.0
    assert res["labels"] and res["num_samples"] == 24 and res["reference"] == "fp32"
    # INT8 (ORT quantize_static, 8 calibration samples) against FP32, measured: agreement 100%,
    # SQNR 25.1 dB; the batch-mean (constant) output scores 5.0 dB and 12.5% agreement.
    assert res["agreement_top1"] >= 90 and res["sqnr_db"] > 15


def _check_report(report, target, precision):
    assert report.status == "measured"
    L = report.latency
    for field in ("p50", "p90", "p95", "p99", "mean", "std", "min", "max", "cv", "throughput_per_s", "noise_pct",
                  "cold_load_ms", "first_inference_ms"):
        assert getattr(L, field) is not None, field
    assert L.iterations == len(L.samples_ms) and L.block_medians_ms
    assert report.memory.peak_delta_mb is not None and report.model.size_bytes > 0
    assert report.runtime.versions and report.runtime.options
    assert report.target.name == target and report.model.precision == precision
    assert report.model.macs and report.efficiency.achieved_gops > 0
    assert report.efficiency.source


@pytest.mark.parametrize("target", ["cpu-ort", "cpu-openvino"])
def test_bench_fp32_and_int8_write_valid_reports(cli_art, cli_art_rw, target):
    """On an artifact `export` and `quantize` wrote (conftest's `cli_art`), with their manifest and quant.json."""
    from edgeforge.bench.run import bench_artifact
    from edgeforge.report.schema import load_report

    art, eval_npz = cli_art_rw, cli_art.parent / "eval.npz"
    q = json.loads((art / "int8-minmax" / "quant.json").read_text())
    fp32 = bench_artifact(art, target, "fp32", eval_dataset=eval_npz, settings=FAST, threads=1)
    _check_report(fp32.report, target, "fp32")
    assert fp32.report.accuracy.top1 > 80 and fp32.report.baseline is None  # the trained sit_tiny: 95% measured
    assert fp32.report.model.macs == Manifest(art).step("export")["model"]["macs"]
    int8 = bench_artifact(art, target, "int8-minmax", eval_dataset=eval_npz, settings=FAST, threads=1)
    r = int8.report
    _check_report(r, target, "int8-minmax")
    assert r.latency.interleaved_with == [f"{target}/fp32"] and r.baseline.precision == "fp32"
    assert r.baseline.speedup == pytest.approx(r.baseline.p50 / r.latency.p50)
    assert r.accuracy.agreement_top1 >= 90 and r.accuracy.sqnr_db > 15  # measured 97% and 28 dB
    assert r.model.quant["qdq"]["weights_per_channel"] > 0
    # what the report states about the quantization is what `quantize` wrote
    cal = q["calibration"]
    assert r.model.quant["calibration"] == {"name": cal["name"], "count": cal["count"], "hash": cal["hash"][:16]}
    assert r.model.quant["scheme"]["activations"] == q["scheme"]["activations"] == "uint8 asymmetric per-tensor"
    # the target's integer kernels against the float emulation of the QDQ graph, on the --eval set
    kf = r.kernel_fidelity
    assert kf.runtime == r.runtime.runtime and kf.num_samples == 100 and kf.sqnr_db > 30 and not kf.drift
    assert fp32.report.kernel_fidelity is None and r.cpu["model"] == fp32.report.cpu["model"]
    for kind in ("json", "md", "html"):
        assert int8.paths[kind] == art / "reports" / f"{target}-int8-minmax.{kind}"
    assert load_report(int8.paths["json"]).latency.p50 == r.latency.p50
    assert "<svg" in int8.paths["html"].read_text() and "p50" in int8.paths["md"].read_text()
    index = int8.paths["index"].read_text()  # every report of the artifact on one page
    assert 'data-plot="accuracy-vs-latency"' in index and index.count('data-plot="latency-histogram"') == 2


def test_int8_is_compared_with_fp32_without_eval(tiny_art_rw):
    from edgeforge.bench.run import CHECK_INPUTS, bench_artifact

    r = bench_artifact(tiny_art_rw, "cpu-ort", "int8-ort", settings=FAST, threads=1).report
    a = r.accuracy
    assert a.num_samples == CHECK_INPUTS and not a.labels and a.reference == "fp32 (cpu-ort)"
    # On the timed inputs (uniform noise pixels, all alike to a net that tells colours apart) a constant
    # output scores 14 dB, more than INT8 (measured 8.5-9 dB): SQNR cannot discriminate here (the --eval
    # test above does); this checks the comparison runs, on those inputs.
    assert a.agreement_top1 is not None and a.sqnr_db > 5 and "timed input" in a.dataset
    first = a
    assert r.kernel_fidelity.inputs == a.dataset and r.kernel_fidelity.num_samples == CHECK_INPUTS
    # without the FP32 model timed alongside, the reference is the FP32 ONNX in ONNX Runtime here
    r = bench_artifact(tiny_art_rw, "cpu-ort", "int8-ort", settings=FAST, threads=1, baseline=False).report
    assert r.baseline is None and r.accuracy.reference == "fp32 (onnxruntime on this host)"
    # the same FP32 model in the same runtime on the same inputs: the same comparison
    assert r.accuracy.agreement_top1 == first.agreement_top1
    assert r.accuracy.sqnr_db == pytest.approx(first.sqnr_db, rel=1e-4)


def test_two_runtimes_alternate_in_one_run(tiny_art_rw, run_cli):
    from edgeforge.bench.run import bench_artifact

    res = bench_artifact(tiny_art_rw, "cpu-ort", "int8-ort", settings=FAST, threads=1, vs=["cpu-openvino", "rpi5-ort:fp32"])
    ort, (ov, rpi) = res.report, [o.report for o in res.others]
    assert ort.target.name == "cpu-ort" and ov.target.name == "cpu-openvino" and ov.model.precision == "int8-ort"
    # All local subjects (and each INT8 subject's FP32 baseline) alternate blocks in one run.
    assert set(ort.latency.interleaved_with) == {"cpu-ort/fp32", "cpu-openvino/int8-ort", "cpu-openvino/fp32"}
    assert ort.latency.blocks == ov.latency.blocks
    for rep in (ort, ov):
        assert rep.baseline.speedup == pytest.approx(rep.baseline.p50 / rep.latency.p50)
    assert ov.baseline.path.endswith("fp32/model.onnx") and ov.baseline.p50 != ort.baseline.p50
    assert rpi.status == "not_measured"
    assert (tiny_art_rw / "reports" / "cpu-openvino-int8-ort.json").is_file()
    code, out, err = run_cli("bench", tiny_art_rw, "--iterations", "10", "--min-time", "0", "--warmup", "1",
                             "--block-size", "5", "--threads", "1", "--vs", "cpu-openvino")
    assert code == 0, err
    assert "fp32 @ cpu-openvino" in out and "fp32 @ cpu-ort" in out
    before = sorted(p.relative_to(tiny_art_rw) for p in tiny_art_rw.rglob("*"))
    code, out, err = run_cli("bench", tiny_art_rw, "--vs", "cpu-ort")
    assert code == 2 and "repeats" in err
    # a --vs naming no target, or a precision the artifact lacks: exit 2 with the reason, nothing run
    code, out, err = run_cli("bench", tiny_art_rw, "--vs", "nope-target")
    assert code == 2 and "unknown target 'nope-target'" in err
    code, out, err = run_cli("bench", tiny_art_rw, "--vs", "cpu-openvino:int8-nope")
    assert code == 2 and "int8-nope" in err
    assert sorted(p.relative_to(tiny_art_rw) for p in tiny_art_rw.rglob("*")) == before


def test_unreachable_target_is_not_measured(tiny_art_rw, monkeypatch):
    from edgeforge.bench.run import bench_artifact

    monkeypatch.delenv("EDGEFORGE_AGENT_RPI5", raising=False)
    res = bench_artifact(tiny_art_rw, "rpi5-ort", "fp32", settings=FAST)
    r = res.report
    assert r.status == "not_measured" and "EDGEFORGE_AGENT_RPI5" in r.reason
    assert r.latency is None and r.accuracy is None and r.memory is None
    data = json.loads(res.paths["json"].read_text())
    assert data["latency"] is None and data["status"] == "not_measured"
    assert "not measured" in res.paths["html"].read_text()


def test_symmetric_only_target_refuses_asymmetric_int8(tiny_art_rw):
    from edgeforge.bench.run import bench_artifact

    with pytest.raises(BadInput, match="symmetric-only"):
        bench_artifact(tiny_art_rw, "jetson-orin-nano", "int8-ort", settings=FAST)


def test_bench_on_a_device_agent(tiny_art_rw, tmp_path, monkeypatch):
    """An agent target measured on the 'device': a real `edgeforge agent serve` process on 127.0.0.1."""
    from edgeforge.bench.run import bench_artifact
    from test_agent_support import AgentProcess

    agent = AgentProcess(tmp_path)
    monkeypatch.setenv("EDGEFORGE_AGENT_TOKEN_FILE", str(agent.token_file))
    monkeypatch.delenv("EDGEFORGE_AGENT_TOKEN", raising=False)
    try:
        r = bench_artifact(tiny_art_rw, "rpi5-ort", "fp32", device_url=agent.url, settings=FAST).report
    finally:
        agent.stop()
    assert r.status == "measured" and r.latency.measured_on == "device"
    assert r.runtime.options["agent"] == agent.url and r.efficiency.peak_figure == "fp32_gflops"


def test_bench_and_compile_cli(tiny_art_rw, run_cli):
    from edgeforge.artifacts import Manifest, sha256_file

    code, out, err = run_cli("bench", tiny_art_rw, "--target", "cpu-ort", "--iterations", "10", "--min-time", "0",
                             "--warmup", "1", "--block-size", "5", "--threads", "1")
    assert code == 0, err
    from edgeforge.report.schema import load_report

    first = load_report(tiny_art_rw / "reports" / "cpu-ort-fp32.json")
    assert first.status == "measured" and first.target.name == "cpu-ort" and first.model.precision == "fp32"
    assert first.latency.iterations == 10 and first.model.path.endswith("fp32/model.onnx")  # --iterations 10
    code, out, err = run_cli("compile", tiny_art_rw, "--target", "cpu-openvino")
    assert code == 0, err
    xml = tiny_art_rw / "cpu-openvino" / "fp32" / "model.xml"
    step = Manifest(tiny_art_rw).step("compile/cpu-openvino/fp32")
    assert xml.is_file() and step["files"]["cpu-openvino/fp32/model.xml"] == sha256_file(xml)
    assert step["sha256"] and step["source_sha256"] == sha256_file(tiny_art_rw / "fp32" / "model.onnx")
    code, out, err = run_cli("compile", tiny_art_rw, "--target", "cpu-openvino")
    assert code == 0 and "up to date" in out
    # bench now runs the compiled IR
    code, out, err = run_cli("bench", tiny_art_rw, "--target", "cpu-openvino", "--iterations", "10", "--min-time",
                             "0", "--warmup", "1", "--block-size", "5", "--threads", "1")
    assert code == 0, err
    rep = json.loads((tiny_art_rw / "reports" / "cpu-openvino-fp32.json").read_text())
    assert rep["model"]["path"].endswith("model.xml")
    # Nothing to compile / toolchain absent / bad precision: exit 2 with the reason.
    code, out, err = run_cli("compile", tiny_art_rw, "--target", "cpu-ort")
    assert code == 2 and "nothing to compile" in err
    code, out, err = run_cli("compile", tiny_art_rw, "--target", "gpu-tensorrt")
    trt = Manifest(tiny_art_rw).step("compile/gpu-tensorrt/fp32")
    if code == 0:  # a machine with TensorRT and a GPU: the engine is written and recorded
        engine = tiny_art_rw / trt["path"]
        assert engine.is_file() and trt["files"][trt["path"]] == sha256_file(engine)
    else:  # the reason, and nothing written
        assert code == 2 and ("TensorRT" in err or "CUDA" in err)
        assert trt is None and not (tiny_art_rw / "gpu-tensorrt").exists()
    code, out, err = run_cli("compile", tiny_art_rw, "--target", "jetson-orin-nano")
    assert code == 2 and "builds its engine on the device" in err
    code, out, err = run_cli("bench", tiny_art_rw, "--precision", "int8-nope")
    assert code == 2 and "int8-nope" in err
    code, out, err = run_cli("bench", tiny_art_rw / "missing")
    assert code == 2 and "no such artifact" in err
