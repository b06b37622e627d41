"""Native build, AddressSanitizer run, torch-free loading, the export switch on a tiny model that
uses both ops (plugin vs decompose on ONNX Runtime CPU), and the TensorRT path (GPU only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeforge import ops
from edgeforge.ops import build, native, schema
from edgeforge.ops import implementations as impls


@pytest.fixture(scope="module")
def report():
    return build.build(fetch=False)


def test_build_says_what_it_built_and_why_it_skipped(report, run_cli):
    # The CPU core needs only cmake and a C++ compiler, which every dev machine and CI has.
    if shutil.which("cmake") is None:
        pytest.skip("no cmake on this machine: " + report.parts["cpu"].reason)
    assert report.parts["cpu"].built, report.parts["cpu"].reason
    for part in report.parts.values():
        assert part.built or part.reason, f"{part.name} skipped without a reason"
    saved = json.loads((Path(report.build_dir) / build.STATUS_FILE).read_text())
    assert set(saved["parts"]) == set(build.PARTS)
    code, out, _ = run_cli("plugins", "info")
    assert code == 0 and "cpu" in out and "built" in out


def test_build_without_a_compiler_reports_instead_of_failing(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no c++
    r = build.build(tmp_path / "b", fetch=False)
    assert not any(p.built for p in r.parts.values())
    assert all("cmake" in p.reason or "compiler" in p.reason for p in r.parts.values())
    # `plugins build --require` exits 1 naming the part it could not build, and why
    code, out, err = run_cli("plugins", "build", "--build-dir", tmp_path / "c", "--no-fetch", "--require", "cpu")
    assert code == 1 and "required plugin parts not built: cpu" in err
    assert "cmake" in out or "compiler" in out
    code, _, err = run_cli("plugins", "build", "--build-dir", tmp_path / "c", "--require", "gpu")
    assert code == 2 and "gpu" in err  # not a part


def test_cpu_core_under_address_sanitizer(report):
    part = report.parts["asan"]
    if not part.built:
        pytest.skip(f"ASan driver not built: {part.reason}")
    proc = subprocess.run([part.path], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert " 0 failed" in proc.stdout


# --------------------------------------------------------------------------- instruction-set paths
_ISA_PROBE = ("import json; from edgeforge.ops import native; import numpy as np; "
              "core = native.cpu_core(); q = np.ones((1, 1, 3, 4), np.float32); "
              "o = core.gated_attention(q, q, q); print(json.dumps(native.isa_info()))")


def _isa_in_subprocess(cap: str | None) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k != native.MAX_ISA_ENV}
    if cap is not None:
        env[native.MAX_ISA_ENV] = cap
    proc = subprocess.run([sys.executable, "-c", _ISA_PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_library_picks_the_best_path_and_the_cap_holds(report):
    if not report.parts["cpu"].built:
        pytest.skip(report.parts["cpu"].reason)
    best = _isa_in_subprocess(None)
    assert best["path"] == best["runs"][0] and best["runs"][-1] in ("generic", "native")
    assert "best path" in best["note"]
    if build.native_build():
        pytest.skip("EDGEFORGE_NATIVE build: one path")
    assert best["built"][-1] == "generic"
    for cap in ("avx2", "generic"):
        if cap not in best["runs"]:
            continue
        got = _isa_in_subprocess(cap)
        assert got["path"] == cap and f"{native.MAX_ISA_ENV}={cap}" in got["note"]
    bogus = _isa_in_subprocess("sse9")
    assert bogus["path"] == best["path"] and "ignored" in bogus["note"]


def test_plugins_info_names_the_path_this_cpu_takes(report, run_cli):
    if not report.parts["cpu"].built:
        pytest.skip(report.parts["cpu"].reason)
    code, out, _ = run_cli("plugins", "info")
    assert code == 0
    assert f"cpu kernel path: {native.isa_info()['path']}" in " ".join(out.split())


def test_paths_use_only_their_own_instructions(report):
    """A library built here must load and run on an older x86-64 CPU: the dispatcher and the
    generic path hold no AVX (ymm) or AVX-512 (zmm) instruction, the AVX2 path no zmm."""
    objdump = shutil.which("objdump")
    if objdump is None or build.native_build():
        pytest.skip("no objdump" if objdump is None else "EDGEFORGE_NATIVE build")
    objs = Path(report.build_dir) / "CMakeFiles"
    kernels = {d: list((objs / d).rglob("*.o")) for d in ("ef_kernels_generic.dir", "ef_kernels_avx2.dir")}
    kernels["dispatcher"] = list((objs / "ef_cpu_core.dir").rglob("ef_cpu.cpp.o"))
    if not all(kernels.values()):
        pytest.skip("object files not found (not an x86-64 build?)")
    banned = {"ef_kernels_generic.dir": ("ymm", "zmm"), "dispatcher": ("ymm", "zmm"), "ef_kernels_avx2.dir": ("zmm",)}
    for key, files in kernels.items():
        for f in files:
            asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(f)], capture_output=True, text=True).stdout
            for reg in banned[key]:
                assert f"%{reg}" not in asm, f"{f.name} ({key}) uses {reg} registers"


def test_loader_imports_without_torch():
    code = ("import sys; import edgeforge.ops, edgeforge.ops.native, edgeforge.ops.build, "
            "edgeforge.ops.tensorrt_check, edgeforge.ops.numpy_ref, edgeforge.ops.decompose; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_register_ort(report):
    import onnxruntime as ort

    so = ort.SessionOptions()
    assert native.register_ort(so) == (native.ort_library_path() is not None)


# --------------------------------------------------------------------------- export switch
class TinyScanAttention(torch.nn.Module):
    """Both ops the way the backbones use them: an RG-LRU-like scan over time, RMT-style decay
    attention with a constant bias, and FoX-style forget-gate attention."""

    def __init__(self, c: int = 16, heads: int = 2, n: int = 9) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.heads, self.d = heads, c // heads
        self.gate = torch.nn.Linear(c, c)
        self.qkv = torch.nn.Linear(c, 3 * c)
        self.forget = torch.nn.Linear(c, heads)
        self.register_buffer("decay", torch.rand(heads, n, n, generator=g) * -2.0)

    def forward(self, x):  # x (B, N, C)
        a = torch.sigmoid(self.gate(x))
        h, last = ops.linear_scan(a, (1 - a) * x, reverse=False)
        B, N, C = h.shape
        q, k, v = self.qkv(h).reshape(B, N, 3, self.heads, self.d).permute(2, 0, 3, 1, 4).unbind(0)
        o1 = ops.gated_attention(q, k, v, bias=self.decay)
        log_f = torch.nn.functional.logsigmoid(self.forget(h)).transpose(1, 2)  # (B, H, N)
        o2 = ops.gated_attention(q, k, v, log_f=log_f)
        return (o1 + o2).transpose(1, 2).reshape(B, N, C), last


def _export_checked(onnx_tools, model, x, mode: str):
    m = onnx_tools.export(model, [x], mode, input_names=["x"], output_names=["y", "h_last"])
    onnx.checker.check_model(m)
    return m


def test_tiny_model_exports_with_plugin_and_decompose_and_both_agree(report, onnx_tools, skip_unless_impl):
    model = TinyScanAttention().eval()
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
    dec = _export_checked(onnx_tools, model, x, "decompose")
    plug = _export_checked(onnx_tools, model, x, "plugin")

    assert not native.uses_custom_ops(dec)
    custom = [n for n in plug.graph.node if n.domain == schema.DOMAIN]
    assert sorted(n.op_type for n in custom) == ["GatedAttention", "GatedAttention", "LinearScan"]
    for n in custom:  # what TensorRT's parser needs to find the plugin
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"edgeforge"

    feeds = {"x": x.numpy()}
    out_dec = impls.ort_session(dec.SerializeToString(), custom_ops=False).run(None, feeds)
    for got, want in zip(out_dec, ref):
        onnx_tools.assert_close(got, want, tol=1e-5)
    skip_unless_impl("ort-kernel")  # the plugin-mode model needs the ORT kernels
    out_plug = impls.ort_session(plug.SerializeToString(), custom_ops=True).run(None, feeds)
    for got, want, dec_out in zip(out_plug, ref, out_dec):
        scale = max(1.0, np.abs(want).max())
        assert np.abs(got - want).max() <= 1e-5 * scale
        assert np.abs(got - dec_out).max() <= 1e-5 * scale


def test_export_mode_rejects_unknown_mode():
    with pytest.raises(ops.OpInputError, match="plugin"):
        with ops.export_mode("fast"):
            pass


# --------------------------------------------------------------------------- TensorRT (GPU)
@pytest.mark.gpu
def test_tensorrt_plugins_run_the_tiny_model(tmp_path, report, onnx_tools):
    from edgeforge.ops import tensorrt_check

    ok, why = tensorrt_check.available()
    if not ok:
        pytest.skip(f"TensorRT path not available here: {why}")
    model = TinyScanAttention().eval()
    x = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
    onnx.save(_export_checked(onnx_tools, model, x, "plugin"), str(tmp_path / "plugin.onnx"))
    out = tensorrt_check.run_onnx(tmp_path / "plugin.onnx", {"x": x.numpy()})
    for name, want in zip(["y", "h_last"], ref):
        assert np.abs(out[name] - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    out16 = tensorrt_check.run_onnx(tmp_path / "plugin.onnx", {"x": x.numpy()}, fp16=True)
    assert np.abs(out16["y"].astype(np.float32) - ref[0]).max() <= 2e-2 * max(1.0, np.abs(ref[0]).max())
