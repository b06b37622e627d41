"""Runner protocol over every runtime present here, with real sessions and real files."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgeforge.errors import BadInput, NotAvailable
from edgeforge.runtimes import create_runner, probe_runtime
from test_agent_support import agent  # noqa: F401  (fixture)
from test_bench_support import CLASSES, SHAPE

LOCAL = [("onnxruntime", {"provider": "cpu", "threads": 1}), ("openvino", {"device": "CPU", "threads": 1})]


def _feed(seed=0):
    return {"input": np.random.default_rng(seed).standard_normal((1, *SHAPE)).astype(np.float32)}


@pytest.mark.parametrize("runtime,options", LOCAL, ids=[r for r, _ in LOCAL])
def test_runner_protocol(tiny_art, runtime, options):  # noqa: F811
    if (why := probe_runtime(runtime, options)) is not None:
        pytest.skip(why)
    runner = create_runner(runtime, tiny_art / "fp32" / "model.onnx", **options)
    with create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", threads=1) as ref:
        expected = ref.infer(_feed())["logits"]
    with runner as r:
        assert r.is_active and r.load_time_s > 0
        assert [s.name for s in r.input_specs()] == ["input"]
        assert r.input_specs()[0].shape == (1, *SHAPE)
        assert r.output_names() == ["logits"]
        out = r.infer(_feed())
        assert out["logits"].shape == (1, CLASSES)
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-5)
        info = r.info()
        assert info.runtime == runtime and info.version and info.versions
    assert not runner.is_active
    with pytest.raises(RuntimeError, match="activate"):
        runner.infer(_feed())
    # A runner can be activated again after deactivate.
    with runner as r:
        assert r.infer(_feed())["logits"].shape == (1, CLASSES)


@pytest.mark.parametrize("runtime,options", LOCAL, ids=[r for r, _ in LOCAL])
def test_input_checks_name_the_problem(tiny_art, runtime, options):  # noqa: F811
    if (why := probe_runtime(runtime, options)) is not None:
        pytest.skip(why)
    x = _feed()["input"]
    with create_runner(runtime, tiny_art / "fp32" / "model.onnx", **options) as r:
        with pytest.raises(BadInput, match=r"missing \['input'\].*inputs are \['input'\]"):
            r.infer({})
        with pytest.raises(BadInput, match=r"unexpected \['extra'\]"):
            r.infer({"input": x, "extra": x})
        with pytest.raises(BadInput, match="dtype float64, the model expects float32"):
            r.infer({"input": x.astype(np.float64)})
        with pytest.raises(BadInput, match=r"axis 2: 8 != 16"):
            r.infer({"input": x[:, :, :8]})
        with pytest.raises(BadInput, match="rank 3"):
            r.infer({"input": x[0]})
        with pytest.raises(BadInput, match="numpy array"):
            r.infer({"input": x.tolist()})


def test_openvino_precision_is_explicit(tiny_art):  # noqa: F811
    if (why := probe_runtime("openvino", {})) is not None:
        pytest.skip(why)
    with create_runner("openvino", tiny_art / "fp32" / "model.onnx", threads=1) as r:
        opts = r.info().options
        assert opts["requested"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert opts["effective"]["INFERENCE_PRECISION_HINT"] == "f32"  # never silently bf16
    with pytest.raises(BadInput, match="precision_hint"):
        create_runner("openvino", tiny_art / "fp32" / "model.onnx", precision_hint="int4")


def test_openvino_ir_compile_matches_onnx(tiny_art, tmp_path):  # noqa: F811
    if (why := probe_runtime("openvino", {})) is not None:
        pytest.skip(why)
    from edgeforge.runtimes.openvino import compile_ir

    files = compile_ir(tiny_art / "fp32" / "model.onnx", tmp_path / "ir")
    assert [f.name for f in files] == ["model.xml", "model.bin"]
    with create_runner("openvino", files[0], threads=1) as ir, \
            create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", threads=1) as onnx:
        np.testing.assert_allclose(ir.infer(_feed())["logits"], onnx.infer(_feed())["logits"], rtol=1e-4, atol=1e-5)


def test_int8_qdq_runs_on_both_cpu_runtimes(tiny_art):  # noqa: F811
    outs = {}
    for runtime, options in LOCAL:
        if probe_runtime(runtime, options) is None:
            with create_runner(runtime, tiny_art / "int8-ort" / "model.onnx", **options) as r:
                outs[runtime] = r.infer(_feed())["logits"]
    with create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", threads=1) as r:
        ref = r.infer(_feed())["logits"]
    for out in outs.values():
        assert np.argmax(out) == np.argmax(ref) or np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_unknown_runtime_and_provider(tiny_art):  # noqa: F811
    with pytest.raises(BadInput, match="runtime 'tflite' is not one of"):
        create_runner("tflite", tiny_art / "fp32" / "model.onnx")
    with pytest.raises(BadInput, match="provider 'npu'"):
        create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", provider="npu")


def test_missing_ort_provider_is_not_available(tiny_art):  # noqa: F811
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the TensorRT EP")
    r = create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", provider="tensorrt")
    with pytest.raises(NotAvailable, match="TensorrtExecutionProvider"):
        r.activate()
    assert "TensorrtExecutionProvider" in probe_runtime("onnxruntime", {"provider": "tensorrt"})


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_ort_gpu_providers_match_cpu(tiny_art, provider):  # noqa: F811
    if (why := probe_runtime("onnxruntime", {"provider": provider})) is not None:
        pytest.skip(f"ONNX Runtime {provider} EP not runnable here: {why}")
    with create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", provider=provider) as gpu, \
            create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", threads=1) as cpu:
        assert gpu.info().options["providers_active"][0] != "CPUExecutionProvider"
        np.testing.assert_allclose(gpu.infer(_feed())["logits"], cpu.infer(_feed())["logits"], rtol=1e-3, atol=1e-3)


def _custom_op_model(path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("LinearScan", ["a", "b"], ["h", "h_last"], domain="edgeforge")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 2]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 2])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 4, 2]),
         helper.make_tensor_value_info("h_last", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("edgeforge", 1)])
    onnx.save(model, str(path))
    return path


def test_custom_op_library_registered_only_when_needed(tiny_art, tmp_path):  # noqa: F811
    import onnxruntime as ort

    from edgeforge.runtimes.onnxruntime import custom_domains, register_custom_ops

    assert custom_domains(tiny_art / "fp32" / "model.onnx") == set()
    assert register_custom_ops(ort.SessionOptions(), tiny_art / "fp32" / "model.onnx") is None
    model = _custom_op_model(tmp_path / "scan.onnx")
    assert custom_domains(model) == {"edgeforge"}
    try:
        lib = register_custom_ops(ort.SessionOptions(), model)
    except NotAvailable as e:  # the library is not built here: the message says what to do
        assert "custom ops" in str(e) and ("plugins build" in str(e) or "decompose" in str(e))
    else:
        assert lib  # edgeforge.ops.native found and registered the library


def test_ort_runner_runs_plugin_mode_custom_ops(tmp_path):
    """A model exported with edgeforge:: nodes runs in the ORT runner, which registers the library."""
    import torch

    from edgeforge import ops
    from edgeforge.ops import native

    if native.ort_library_path() is None:
        pytest.skip("the edgeforge ONNX Runtime library is not built (make plugins)")

    class Scan(torch.nn.Module):
        def forward(self, x):
            a = torch.sigmoid(x)
            h, last = ops.linear_scan(a, (1 - a) * x)
            return h, last

    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "scan.onnx"
    with ops.export_mode("plugin"):
        torch.onnx.export(Scan(), (x,), str(path), dynamo=False, opset_version=17, custom_opsets=ops.CUSTOM_OPSETS,
                          input_names=["x"], output_names=["h", "h_last"])
    with create_runner("onnxruntime", path, threads=1) as r:
        out = r.infer({"x": x.numpy()})
        assert r.info().options["custom_op_library"].endswith(".so")
    with torch.no_grad():
        ref = Scan()(x)
    np.testing.assert_allclose(out["h"], ref[0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["h_last"], ref[1].numpy(), rtol=1e-5, atol=1e-5)


def test_runtimes_targets_latency_import_and_run_without_torch(tiny_art, tmp_path):  # noqa: F811
    """A device has only its runtime: these modules import, and a whole bench runs, with torch blocked."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import shutil
        import edgeforge.runtimes, edgeforge.runtimes.base, edgeforge.runtimes.onnxruntime
        import edgeforge.runtimes.openvino, edgeforge.runtimes.tensorrt, edgeforge.runtimes.coreml
        import edgeforge.runtimes.remote, edgeforge.targets, edgeforge.targets.constraints
        import edgeforge.bench.latency, edgeforge.bench.memory, edgeforge.bench.inputs
        import edgeforge.bench.accuracy, edgeforge.bench.run, edgeforge.report.io, edgeforge.report.compare
        from edgeforge.bench.latency import Settings
        from edgeforge.bench.run import bench_artifact
        art = shutil.copytree({str(tiny_art)!r}, {str(tmp_path / "art")!r})
        r = bench_artifact(art, "cpu-ort", "int8-ort", settings=Settings(warmup=2, warmup_time_s=0,
                           iterations=20, block_size=5), threads=1).report
        assert r.status == "measured" and r.latency.p50 > 0 and r.baseline is not None, r
        assert "torch" not in sys.modules
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


# ------------------------------------------------------------------ remote agent (client side)
# A real `edgeforge agent serve` process (torch blocked in it); more in tests/test_agent.py.
@pytest.fixture
def agent_url(agent):  # noqa: F811
    return agent.url


def test_remote_runner_over_http(tiny_art, agent_url):  # noqa: F811
    from edgeforge.runtimes.remote import RemoteRunner, probe

    assert probe(agent_url)["auth"] == "bearer" and "onnxruntime" in probe(agent_url)["runtimes"]
    with RemoteRunner(agent_url, tiny_art / "fp32" / "model.onnx", runtime="onnxruntime",
                      options={"provider": "cpu"}) as r, \
            create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", threads=1) as local:
        assert r.output_names() == ["logits"]
        np.testing.assert_allclose(r.infer(_feed())["logits"], local.infer(_feed())["logits"], rtol=1e-5)
        res = r.device_latency(_feed(), warmup=2, iterations=10, min_time_s=0)
        assert len(res["samples_ms"]) >= 10
        assert r.device_load_time_s is not None and r.info().options["agent"] == agent_url
    with pytest.raises(BadInput, match="model_path|no such"):
        RemoteRunner(agent_url, tiny_art / "nope.onnx", runtime="onnxruntime").activate()


def test_remote_runner_unreachable_and_agent_errors(tiny_art, agent_url):  # noqa: F811
    import socket

    from edgeforge.runtimes.remote import AgentError, RemoteRunner

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    with pytest.raises(NotAvailable, match="unreachable"):
        RemoteRunner(f"http://127.0.0.1:{port}", tiny_art / "fp32" / "model.onnx", runtime="onnxruntime").activate()
    with pytest.raises(AgentError, match="not installed on this agent"):
        RemoteRunner(agent_url, tiny_art / "fp32" / "model.onnx", runtime="tensorrt").activate()
    with pytest.raises(AgentError, match="HTTP 401"):
        RemoteRunner(agent_url, tiny_art / "fp32" / "model.onnx", runtime="onnxruntime", token="wrong").activate()


# ------------------------------------------------------------------ TensorRT (GPU) and CoreML
@pytest.mark.gpu
def test_tensorrt_engine_fp16_and_int8_match_ort(tiny_art, tmp_path):  # noqa: F811
    if (why := probe_runtime("tensorrt")) is not None:
        pytest.skip(f"TensorRT path not runnable here: {why}")
    from edgeforge.runtimes.tensorrt import TensorRTRunner

    with create_runner("onnxruntime", tiny_art / "fp32" / "model.onnx", threads=1) as ref:
        expected = ref.infer(_feed())["logits"]
    for precision, model, tol in (("fp16", "fp32", 1e-2), ("int8", "int8-ortsym", 1e-1)):
        runner = TensorRTRunner(tiny_art / model / "model.onnx", precision=precision, cache_dir=tmp_path / "cache")
        with runner as r:
            out = r.infer(_feed())["logits"]
            assert np.abs(out - expected).max() <= tol * max(np.abs(expected).max(), 1.0)
        assert not runner.engine_from_cache
        with TensorRTRunner(tiny_art / model / "model.onnx", precision=precision, cache_dir=tmp_path / "cache") as r2:
            assert r2.engine_from_cache  # same ONNX, precision, GPU and TensorRT: reused
    assert (tmp_path / "cache" / "timing.cache").is_file()


def _coremltools_or_skip():
    try:
        import coremltools  # noqa: F401
    except ImportError as e:
        pytest.skip(f"coremltools is not installed: {e}")


@pytest.mark.slow
def test_coreml_conversion_fp32_and_int8_weights(tmp_path):
    _coremltools_or_skip()
    import torch

    from edgeforge.runtimes.coreml import convert_torch, save_mlpackage
    from test_bench_support import _model

    model = _model()
    x = {"input": torch.randn(1, *SHAPE)}
    fp32 = convert_torch(model, x, "fp32", output_names=["logits"])
    spec = fp32.get_spec()
    assert [i.name for i in spec.description.input] == ["input"]
    assert [o.name for o in spec.description.output] == ["logits"]
    # coremltools leaves weights under 2048 elements in float: give this model one that is larger.
    big = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 64)).eval()
    int8 = convert_torch(big, x, "int8-weights", output_names=["logits"])
    ops = {op.op_type for f in int8._mil_program.functions.values() for op in f.operations}
    assert ops & {"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"}, ops
    path = save_mlpackage(int8, tmp_path / "m.mlpackage")
    assert (path / "Manifest.json").is_file()
    if platform.system() != "Darwin":
        with pytest.raises(NotAvailable, match="macOS"):
            convert_torch(model, x, "w8a8", calibration=lambda: [{"input": x["input"].numpy()}])


@pytest.mark.macos
def test_coreml_predict_matches_torch(tmp_path):
    if platform.system() != "Darwin":
        pytest.skip("CoreML prediction needs macOS")
    _coremltools_or_skip()
    import torch

    from edgeforge.runtimes.coreml import CoreMLRunner, convert_torch, save_mlpackage
    from test_bench_support import _model

    model = _model()
    x = torch.randn(1, *SHAPE)
    path = save_mlpackage(convert_torch(model, {"input": x}, "fp32", output_names=["logits"]), tmp_path / "m.mlpackage")
    with CoreMLRunner(path, compute_units="CPU_ONLY") as r:
        out = r.infer({"input": x.numpy()})["logits"]
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-3, atol=1e-3)
