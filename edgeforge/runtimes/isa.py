"""Run a model with the int8 kernels of a CPU that lacks VNNI, on a CPU that has it.

The x86 int8 kernels without VNNI (AVX2; AVX-512 without VNNI) add u8 x s8 byte pairs in
saturating 16-bit lanes; with VNNI/AMX they accumulate in 32 bits. To check on a VNNI build
machine what an AVX2 edge box computes, the real kernels are run with the ISA capped:
- OpenVINO: oneDNN honours `ONEDNN_MAX_CPU_ISA=AVX2` and takes its AVX2 kernels natively (some
  attention MatMul primitives refuse to compile under the cap: the error says so).
- ONNX Runtime: MLAS reads CPUID and has no cap, so the process runs under `qemu-x86_64 -cpu
  Haswell` (Debian's qemu-user: TCG emulates AVX2 and reports no AVX-512/VNNI). Slow (about 10x),
  exact: the same MLAS kernels an AVX2 CPU runs.
On a CPU without VNNI both run natively. Each run is a subprocess, so the cap does not leak into
the caller. Outputs are real kernel outputs, for accuracy; never time them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeforge.errors import NotAvailable

ISAS = ("native", "avx2")
QEMU_CPU = "Haswell"  # AVX2 + FMA, no AVX-512, no VNNI


def _host_has_vnni() -> bool:
    from edgeforge.targets.host import DOT32_FLAGS, _cpu_flags

    return any(f in _cpu_flags() for f in DOT32_FLAGS)


def how(runtime: str, isa: str) -> tuple[list[str], dict[str, str]]:
    """(command prefix, extra env) that runs `python` with `runtime`'s kernels capped at `isa`."""
    if isa not in ISAS:
        raise ValueError(f"isa {isa!r}: accepted {', '.join(ISAS)}")
    if isa == "native" or not _host_has_vnni():
        return [sys.executable], {}
    if runtime == "openvino":
        return [sys.executable], {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    if runtime == "onnxruntime":
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise NotAvailable("ONNX Runtime's AVX2 int8 kernels on this VNNI CPU need qemu-x86_64 (Debian package "
                               "qemu-user): MLAS has no ISA cap")
        return [qemu, "-cpu", QEMU_CPU, sys.executable], {}
    raise ValueError(f"runtime {runtime!r}: accepted onnxruntime, openvino")


def run(model_path: str | os.PathLike, x: np.ndarray, runtime: str = "onnxruntime", isa: str = "avx2",
        timeout: float = 900.0) -> np.ndarray:
    """The model's first output on inputs `x` (N, ...), batch 1 per call, with `runtime`'s
    kernels at `isa`. Raises NotAvailable (with the reason) when that cannot run here."""
    prefix, env = how(runtime, isa)
    with tempfile.TemporaryDirectory(prefix="edgeforge-isa-") as tmp:
        inp, out = Path(tmp) / "x.npy", Path(tmp) / "y.npy"
        np.save(inp, np.ascontiguousarray(x, np.float32))
        cmd = [*prefix, "-m", "edgeforge.runtimes.isa", runtime, str(model_path), str(inp), str(out)]
        full_env = {**os.environ, **env, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        p = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0 or not out.is_file():
            tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-4:])
            raise NotAvailable(f"{runtime} at {isa} ({' '.join(f'{k}={v}' for k, v in env.items()) or prefix[0]}) "
                               f"failed on {model_path}: {tail}")
        return np.load(out)


def _worker(runtime: str, model_path: str, inp: str, out: str) -> None:
    x = np.load(inp)
    outs = []
    if runtime == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for i in range(len(x)):
            outs.append(sess.run(None, {name: x[i:i + 1]})[0])
    else:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(model_path), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1"})
        for i in range(len(x)):
            outs.append(np.asarray(compiled(x[i:i + 1])[0]))
    np.save(out, np.concatenate(outs))
    print(json.dumps({"runtime": runtime, "samples": len(x)}))


if __name__ == "__main__":
    _worker(*sys.argv[1:5])
