"""`edgeforge agent serve`: runs on a device (Jetson, Raspberry Pi, Mac) and serves the protocol
of edgeforge.runtimes.remote (plain HTTP + JSON, standard library only). Torch-free.

Security and robustness:
- Every request but `GET /v1/info` needs `Authorization: Bearer <token>`, compared in constant
  time (hmac.compare_digest). The token comes from a file (`--token-file`) or the environment
  (EDGEFORGE_AGENT_TOKEN), never from the command line. It says who may use the agent; it does
  not encrypt: over plain HTTP anyone on the path can read it, the models and the results, so
  reach an agent on another machine through TLS (`--tls-cert/--tls-key`, the client trusting the
  certificate through EDGEFORGE_AGENT_CA) or an SSH tunnel (README).
- Listens on 127.0.0.1 unless told otherwise.
- Uploads: a size limit (Content-Length checked before reading; a body shorter than announced is
  refused as truncated); only model formats a runtime loads, checked by content: ONNX (protobuf
  ModelProto), OpenVINO IR (a zip of model.xml + model.bin), a TensorRT engine, an .mlpackage
  as a zip. Pickles, code and anything else are refused. Inputs are npz, loaded with
  allow_pickle=False.
- Each model lives in its own temporary directory under the agent's work directory, removed on
  DELETE, on expiry (idle longer than `--model-ttl`) and at shutdown; a refused or failed upload
  leaves nothing behind.
- One run (load, infer, benchmark) at a time; others wait in a queue of at most `--max-queue`,
  beyond which the answer is 503 "busy" with Retry-After. Reads time out (`--read-timeout`), runs
  stop at `--run-timeout` (504). A client that disconnects while waiting or mid-benchmark is
  noticed between blocks of calls and frees the slot.

Benchmarks time the model with the last feed the client sent to `/infer` (bench in edgeforge
infers once before timing), else with inputs generated from `seed`.
"""

from __future__ import annotations

import hmac
import io
import json
import os
import platform
import select
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge import __version__

API = "/v1"
TOKEN_ENV = "EDGEFORGE_AGENT_TOKEN"
RUNTIME_FILES = {  # runtime -> accepted upload kinds
    "onnxruntime": ("onnx",),
    "openvino": ("onnx", "openvino-ir"),
    "tensorrt": ("onnx", "tensorrt-engine"),
    "coreml": ("mlpackage",),
}


# Runner options a client may set, per runtime: scalars only. Options that name files or libraries
# (TensorRT's cache_dir and plugin_library, ONNX Runtime provider options with paths) are the
# agent's own business: a client must not make the agent write to, or load code from, a path.
CLIENT_OPTIONS = {
    "onnxruntime": {"provider": str, "threads": int, "inter_op_threads": int, "graph_optimization": str,
                    "allow_spinning": bool, "provider_options": dict},
    "openvino": {"device": str, "precision_hint": str, "threads": int, "num_streams": int, "performance_mode": str},
    "tensorrt": {"precision": str, "workspace_mb": int, "batch": int},
    "coreml": {"compute_units": str},
}
_PATHLIKE = ("path", "dir", "file", "cache", "plugin", "lib", "dump", "log")


def client_options(runtime: str, options: dict) -> dict:
    """The runner options from a client, checked against CLIENT_OPTIONS (HttpError 400 otherwise)."""
    allowed = CLIENT_OPTIONS.get(runtime, {})
    out = {}
    for k, v in options.items():
        kind = allowed.get(k)
        if kind is None:
            raise HttpError(400, f"option {k!r} is not accepted for {runtime} by this agent (accepted: "
                                 f"{', '.join(sorted(allowed)) or 'none'})")
        if kind is int and isinstance(v, bool) or not isinstance(v, kind):
            raise HttpError(400, f"option {k!r} must be a {kind.__name__}, not {type(v).__name__}")
        if kind is dict:
            for pk, pv in v.items():
                if any(w in str(pk).lower() for w in _PATHLIKE) or not isinstance(pv, (int, float, bool, str)) \
                        or (isinstance(pv, str) and ("/" in pv or "\\" in pv)):
                    raise HttpError(400, f"option {k}.{pk} is not accepted by this agent: provider options that "
                                         "name files, caches or libraries are set on the device, not by clients")
        out[k] = v
    return out


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ClientGone(Exception):
    """The client closed its connection; its work is dropped."""


# ------------------------------------------------------------------ upload content checks
def _looks_like_onnx(data: bytes) -> str | None:
    """None when `data` parses as an ONNX ModelProto's leading fields; else why not. Checks the
    protobuf wire format of the first fields (ir_version = field 1 varint, then strings or the
    graph) without importing onnx, which a device may not have; the runtime parses the rest."""
    if len(data) < 16:
        return "too short to be an ONNX model"
    pos, seen = 0, set()
    for _ in range(8):
        if pos >= len(data):
            break
        key, pos = _varint(data, pos)
        if key is None:
            return "not a protobuf message"
        fnum, wtype = key >> 3, key & 7
        if fnum < 1 or fnum > 30 or wtype not in (0, 2):
            return f"field {fnum} wire type {wtype} is not part of an ONNX ModelProto"
        if wtype == 0:
            _, pos = _varint(data, pos)
        else:
            n, pos = _varint(data, pos)
            if n is None or pos + n > len(data):
                return "a length-delimited field runs past the end (truncated?)"
            pos += n
        if pos is None:
            return "not a protobuf message"
        seen.add(fnum)
    if 1 not in seen:
        return "no ir_version field: not an ONNX model"
    return None


def _varint(data: bytes, pos: int) -> tuple[int | None, int | None]:
    result, shift = 0, 0
    while pos < len(data) and shift < 64:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    return None, None


def _refuse_code(data: bytes) -> None:
    head = data[:8]
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        raise HttpError(415, "refused: the upload is a Python pickle; the agent loads model files only "
                             "(ONNX, OpenVINO IR zip, TensorRT engine, .mlpackage zip)")
    if head.startswith((b"#!", b"\x7fELF", b"MZ")) or head[:4] in (b"\xca\xfe\xba\xbe", b"\xcf\xfa\xed\xfe"):
        raise HttpError(415, "refused: the upload is a script or an executable, not a model file")


def _safe_extract(data: bytes, dest: Path, allowed_ext: tuple[str, ...]) -> list[Path]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise HttpError(415, f"refused: not a valid zip ({e})") from e
    out = []
    for info in zf.infolist():
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name:
            raise HttpError(415, f"refused: zip entry {name!r} points outside its folder")
        if info.is_dir():
            continue
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise HttpError(415, f"refused: zip entry {name!r} is a symbolic link")
        if allowed_ext and not name.lower().endswith(allowed_ext):
            raise HttpError(415, f"refused: zip entry {name!r} is not one of {', '.join(allowed_ext)}")
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as f:
            shutil.copyfileobj(src, f)
        out.append(target)
    return out


def store_model(data: bytes, runtime: str, filename: str, folder: Path) -> Path:
    """Check the upload by content for `runtime` and write it under `folder`; return what to load."""
    _refuse_code(data)
    kinds = RUNTIME_FILES.get(runtime)
    if kinds is None:
        raise HttpError(400, f"runtime {runtime!r} is not one of {sorted(RUNTIME_FILES)}")
    is_zip = data[:4] == b"PK\x03\x04"
    if "onnx" in kinds and not is_zip and _looks_like_onnx(data) is None:
        p = folder / "model.onnx"
        p.write_bytes(data)
        return p
    if "openvino-ir" in kinds and is_zip:
        files = _safe_extract(data, folder, (".xml", ".bin"))
        xml = [f for f in files if f.suffix == ".xml"]
        if len(xml) != 1 or not xml[0].with_suffix(".bin").is_file():
            raise HttpError(415, "refused: an OpenVINO IR upload is a zip of one model.xml and its model.bin")
        if not xml[0].read_bytes()[:256].lstrip().startswith((b"<?xml", b"<net")):
            raise HttpError(415, f"refused: {xml[0].name} is not OpenVINO IR XML")
        return xml[0]
    if "mlpackage" in kinds and is_zip:
        _safe_extract(data, folder, ())
        pkgs = [p for p in folder.rglob("*.mlpackage") if (p / "Manifest.json").is_file()]
        if len(pkgs) != 1:
            raise HttpError(415, "refused: an .mlpackage upload is a zip of one NAME.mlpackage folder with its "
                                 "Manifest.json")
        return pkgs[0]
    if "tensorrt-engine" in kinds and not is_zip and filename.endswith((".engine", ".plan", ".trt")):
        p = folder / "model.engine"  # TensorRT refuses to deserialize anything that is not an engine
        p.write_bytes(data)
        return p
    why = _looks_like_onnx(data) if not is_zip else "a zip"
    accepted = {"onnx": "ONNX", "openvino-ir": "OpenVINO IR (zip of .xml + .bin)",
                "tensorrt-engine": "TensorRT engine (.engine)", "mlpackage": ".mlpackage (zip)"}
    raise HttpError(415, f"refused: {filename!r} is not a model {runtime} loads ({why}); accepted: "
                         + ", ".join(accepted[k] for k in kinds))


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    if data[:4] != b"PK\x03\x04":
        if data[:1] == b"\x80":
            raise HttpError(400, "refused: the feed is a Python pickle; send an npz (np.savez), which the agent "
                                 "loads with allow_pickle=False")
        raise HttpError(400, "refused: the feed is not an npz archive (np.savez)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickles
        raise HttpError(400, f"refused: the npz holds pickled objects ({e})") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise HttpError(400, f"refused: not a readable npz ({e})") from e


# ------------------------------------------------------------------ state
@dataclass
class Model:
    id: str
    runner: Any
    folder: Path
    runtime: str
    last_used: float = field(default_factory=time.monotonic)
    feed: dict | None = None
    ran: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while it runs; drop waits for it


class Slot:
    """One run at a time; at most `max_waiting` waiting (beyond: busy)."""

    def __init__(self, max_waiting: int):
        self.cv = threading.Condition()
        self.busy = False
        self.waiting = 0
        self.max_waiting = max_waiting

    def acquire(self, gone, timeout_s: float) -> None:
        with self.cv:
            if self.busy and self.waiting >= self.max_waiting:
                raise HttpError(503, f"busy: a run is in progress and {self.waiting} more are queued "
                                     f"(the queue holds {self.max_waiting}); retry later", {"Retry-After": "5"})
            self.waiting += 1
            deadline = time.monotonic() + timeout_s
            try:
                while self.busy:
                    self.cv.wait(0.1)
                    if gone():
                        raise ClientGone()
                    if time.monotonic() > deadline:
                        raise HttpError(503, f"busy: waited {timeout_s:.0f} s for the run slot", {"Retry-After": "5"})
                self.busy = True
            finally:
                self.waiting -= 1

    def release(self) -> None:
        with self.cv:
            self.busy = False
            self.cv.notify()


class Agent:
    def __init__(self, token: str, workdir: Path | None = None, max_upload_mb: float = 512.0,
                 max_queue: int = 4, read_timeout_s: float = 30.0, run_timeout_s: float = 600.0,
                 model_ttl_s: float = 900.0, max_models: int = 8, device: str | None = None):
        if not token:
            raise ValueError("the agent needs a token")
        self.token = token.encode()
        self.base = Path(workdir) if workdir else Path(tempfile.gettempdir())
        self.base.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeforge-agent-", dir=self.base))
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.slot = Slot(max_queue)
        self.read_timeout_s = read_timeout_s
        self.run_timeout_s = run_timeout_s
        self.model_ttl_s = model_ttl_s
        self.max_models = max_models
        self.models: dict[str, Model] = {}
        self.lock = threading.Lock()
        self.device = device or _device_description()
        self.runtimes = _runtimes()

    # -- lifecycle
    def expire(self) -> list[str]:
        """Drop models unused for longer than the TTL (never one that is running)."""
        now = time.monotonic()
        with self.lock:
            old = [m for m in self.models.values() if now - m.last_used > self.model_ttl_s]
        dropped = []
        for m in old:
            if m.lock.acquire(blocking=False):
                m.lock.release()
                if self.drop(m.id, wait=False):
                    dropped.append(m.id)
        return dropped

    def drop(self, model_id: str, wait: bool = True) -> bool:
        """Remove a model and its folder; waits for a run on it to end (`wait`), else skips a busy one."""
        with self.lock:
            m = self.models.get(model_id)
        if m is None:
            return False
        if not m.lock.acquire(blocking=wait):
            return False
        try:
            with self.lock:
                if self.models.get(model_id) is not m:
                    return False
                del self.models[model_id]
            try:
                m.runner.deactivate()
            finally:
                shutil.rmtree(m.folder, ignore_errors=True)
        finally:
            m.lock.release()
        return True

    def close(self) -> None:
        for mid in list(self.models):
            self.drop(mid, wait=False)
        for m in list(self.models.values()):  # still running at shutdown: free it anyway
            m.runner.deactivate()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def info(self) -> dict:
        return {"edgeforge": __version__, "device": self.device, "runtimes": self.runtimes,
                "auth": "bearer", "max_upload_mb": round(self.max_upload / 2**20, 1),
                "busy": self.slot.busy, "queued": self.slot.waiting, "models": len(self.models)}

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self.token)

    # -- operations (called with the run slot held)
    def load(self, data: bytes, spec: dict) -> dict:
        from edgeforge.runtimes import create_runner

        runtime = spec.get("runtime")
        if runtime not in RUNTIME_FILES:
            raise HttpError(400, f"runtime {runtime!r} is not one of {sorted(RUNTIME_FILES)}")
        raw = spec.get("options") or {}
        if not isinstance(raw, dict):
            raise HttpError(400, "X-Edgeforge-Spec options must be an object")
        options = client_options(runtime, raw)
        if runtime not in self.runtimes:
            raise HttpError(400, f"runtime {runtime!r} is not installed on this agent (installed: "
                                 f"{sorted(self.runtimes) or 'none'})")
        with self.lock:
            if len(self.models) >= self.max_models:
                raise HttpError(503, f"busy: {len(self.models)} models loaded (at most {self.max_models}); "
                                     "delete one first", {"Retry-After": "5"})
        folder = Path(tempfile.mkdtemp(prefix="model-", dir=self.workdir))
        try:
            path = store_model(data, runtime, str(spec.get("filename") or "model"), folder)
            if runtime == "tensorrt":  # engines cached by the agent, under its own folder
                options["cache_dir"] = str(self.base / "tensorrt-cache")
            try:
                runner = create_runner(runtime, path, **options)
                runner.activate()
            except HttpError:
                raise
            except Exception as e:  # noqa: BLE001 - the runtime's own words, as a client error
                raise HttpError(422, f"{runtime} could not load the model: {type(e).__name__}: {e}") from e
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        mid = uuid.uuid4().hex
        with self.lock:
            self.models[mid] = Model(mid, runner, folder, runtime)
        info = runner.info()
        return {"model_id": mid, "inputs": [s.to_dict() for s in runner.input_specs()],
                "outputs": runner.output_names(), "load_ms": runner.load_time_s * 1e3,
                "runtime": {"runtime": info.runtime, "version": info.version,
                            "device": f"{info.device} on {self.device}", "options": info.options,
                            "versions": info.versions}}

    def model(self, mid: str) -> Model:
        with self.lock:
            m = self.models.get(mid)
        if m is None:
            raise HttpError(404, f"no model {mid!r} on this agent (deleted, expired, or the agent restarted)")
        m.last_used = time.monotonic()
        return m

    def infer(self, m: Model, feed: dict) -> dict:
        with m.lock:
            try:
                return self._infer(m, feed)
            finally:
                m.last_used = time.monotonic()

    def _infer(self, m: Model, feed: dict) -> dict:
        if m.id not in self.models:
            raise HttpError(404, f"model {m.id!r} was deleted")
        try:
            out = m.runner.infer(feed)
        except Exception as e:  # noqa: BLE001
            raise HttpError(400, f"inference failed: {type(e).__name__}: {e}") from e
        m.feed, m.ran = feed, True
        return out

    def bench(self, m: Model, s: dict, gone) -> dict:
        with m.lock:
            if m.id not in self.models:
                raise HttpError(404, f"model {m.id!r} was deleted")
            try:
                return self._bench(m, s, gone)
            finally:
                m.last_used = time.monotonic()

    def _bench(self, m: Model, s: dict, gone) -> dict:
        from edgeforge.bench.inputs import make_feed
        from edgeforge.bench.memory import PeakMemory

        try:
            warmup = int(s.get("warmup", 10))
            iterations = int(s.get("iterations", 100))
            min_time_s = float(s.get("min_time_s", 0.0))
            seed = int(s.get("seed", 0))
            block = max(1, int(s.get("block_size", 10)))
        except (TypeError, ValueError) as e:
            raise HttpError(400, f"bad bench settings: {e}") from e
        if warmup < 0 or iterations < 1 or min_time_s < 0 or iterations > 1_000_000:
            raise HttpError(400, "bad bench settings: warmup >= 0, 1 <= iterations <= 1e6, min_time_s >= 0")
        feed = m.feed or make_feed(m.runner.input_specs(), {}, seed=seed)
        deadline = time.monotonic() + self.run_timeout_s
        first = None
        infer = m.runner._infer
        with PeakMemory() as mem:
            if not m.ran:
                t0 = time.perf_counter()
                m.runner.infer(feed)
                first = (time.perf_counter() - t0) * 1e3
                m.ran = True
            for i in range(warmup):
                infer(feed)
                if i % block == 0:
                    self._still_wanted(gone, deadline)
            samples: list[float] = []
            t_start = time.perf_counter()
            while True:
                n = block if len(samples) >= iterations else min(block, iterations - len(samples))
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    infer(feed)
                    samples.append((time.perf_counter_ns() - t0) / 1e6)
                if len(samples) >= iterations and time.perf_counter() - t_start >= min_time_s:
                    break
                self._still_wanted(gone, deadline)
        return {"samples_ms": samples, "first_inference_ms": first, "peak_rss_delta_mb": mem.delta_mb}

    def _still_wanted(self, gone, deadline: float) -> None:
        if gone():
            raise ClientGone()
        if time.monotonic() > deadline:
            raise HttpError(504, f"the run took longer than the agent's run timeout ({self.run_timeout_s:.0f} s); "
                                 "ask for fewer iterations or a shorter min_time_s")


def _device_description() -> str:
    from edgeforge.targets.host import _cpu_name

    return f"{platform.node()}: {_cpu_name()} ({platform.machine()}, {platform.system()} {platform.release()})"


def _runtimes() -> dict[str, str]:
    """Runtimes that can run here, with their versions."""
    import importlib.metadata as md

    from edgeforge.runtimes import probe_runtime

    out = {}
    for name, dist in (("onnxruntime", ("onnxruntime", "onnxruntime-gpu")), ("openvino", ("openvino",)),
                       ("tensorrt", ("tensorrt",)), ("coreml", ("coremltools",))):
        if probe_runtime(name) is None:
            for d in dist:
                try:
                    out[name] = md.version(d)
                    break
                except md.PackageNotFoundError:
                    continue
            out.setdefault(name, "unknown")
    return out


# ------------------------------------------------------------------ HTTP
class Handler(BaseHTTPRequestHandler):
    server_version = f"edgeforge-agent/{__version__}"
    agent: Agent  # set on the subclass by make_server

    def log_message(self, fmt, *args):  # one line per request on stderr, no bodies, no tokens
        if self.server.log:
            super().log_message(fmt, *args)

    def setup(self):
        self.request.settimeout(self.agent.read_timeout_s)
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                self.request.close()
                raise
        super().setup()

    def _send(self, status: int, body: Any, ctype: str = "application/json", headers: dict | None = None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass

    def _gone(self) -> bool:
        """The client closed its end (readable with nothing to read). A client sends nothing after
        its request, so on TLS (no peeking) reading what is there is harmless."""
        conn = self.connection
        try:
            r, _, _ = select.select([conn], [], [], 0)
            if not r:
                return False
            if not isinstance(conn, ssl.SSLSocket):
                return conn.recv(1, socket.MSG_PEEK) == b""
            timeout = conn.gettimeout()
            conn.settimeout(0)
            try:
                return conn.recv(1) == b""
            except (ssl.SSLWantReadError, BlockingIOError):
                return False  # a TLS record without application data
            finally:
                conn.settimeout(timeout)
        except (OSError, ValueError):
            return True

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise HttpError(411, "a Content-Length header is required")
        try:
            n = int(length)
        except ValueError as e:
            raise HttpError(400, f"bad Content-Length {length!r}") from e
        if n < 0:
            raise HttpError(400, f"bad Content-Length {length!r}")
        if n > limit:
            self.close_connection = True
            raise HttpError(413, f"upload of {n / 2**20:.1f} MiB is over this agent's limit of "
                                 f"{limit / 2**20:.1f} MiB (--max-upload-mb)")
        chunks, got = [], 0
        try:
            while got < n:
                b = self.rfile.read(min(1 << 20, n - got))
                if not b:
                    break
                chunks.append(b)
                got += len(b)
        except socket.timeout as e:
            self.close_connection = True
            raise HttpError(408, f"the body stopped arriving after {got} of {n} bytes "
                                 f"(read timeout {self.agent.read_timeout_s:.0f} s)") from e
        if got < n:
            self.close_connection = True
            raise HttpError(400, f"truncated upload: {got} of the {n} bytes announced arrived")
        return b"".join(chunks)

    def _dispatch(self, method: str) -> None:
        agent = self.agent
        try:
            path = self.path.split("?", 1)[0].rstrip("/")
            if method == "GET" and path == f"{API}/info":
                return self._send(200, agent.info())
            if not agent.authorized(self.headers.get("Authorization")):
                self.close_connection = True
                return self._send(401, {"error": "unauthorized: send the agent's token as 'Authorization: "
                                                 "Bearer <token>' (client: EDGEFORGE_AGENT_TOKEN or "
                                                 "EDGEFORGE_AGENT_TOKEN_FILE)"}, headers={"WWW-Authenticate": "Bearer"})
            agent.expire()
            parts = path.split("/")[1:]  # v1, models, id, action
            if method == "POST" and path == f"{API}/models":
                try:
                    spec = json.loads(self.headers.get("X-Edgeforge-Spec") or "{}")
                    if not isinstance(spec, dict):
                        raise ValueError("not an object")
                except ValueError as e:
                    raise HttpError(400, f"bad X-Edgeforge-Spec header: {e}") from e
                data = self._body(agent.max_upload)
                return self._send(200, self._run(lambda: agent.load(data, spec)))
            if len(parts) >= 3 and parts[:2] == ["v1", "models"]:
                mid = parts[2]
                action = parts[3] if len(parts) > 3 else None
                if method == "DELETE" and action is None:
                    if not agent.drop(mid):
                        raise HttpError(404, f"no model {mid!r} on this agent")
                    return self._send(200, {"deleted": mid})
                if method == "POST" and action == "infer":
                    m = agent.model(mid)
                    feed = load_npz(self._body(agent.max_upload))
                    out = self._run(lambda: agent.infer(m, feed))
                    buf = io.BytesIO()
                    np.savez(buf, **out)
                    return self._send(200, buf.getvalue(), "application/octet-stream")
                if method == "POST" and action == "bench":
                    m = agent.model(mid)
                    try:
                        s = json.loads(self._body(1 << 16) or b"{}")
                    except ValueError as e:
                        raise HttpError(400, f"bench settings are not JSON: {e}") from e
                    return self._send(200, self._run(lambda: agent.bench(m, s, self._gone)))
            raise HttpError(404, f"no such endpoint: {method} {path}")
        except HttpError as e:
            self._send(e.status, {"error": e.message}, headers=e.headers)
        except ClientGone:
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - never a traceback to the client, never a dead agent
            self._send(500, {"error": f"agent error: {type(e).__name__}: {e}"})

    def _run(self, fn):
        self.agent.slot.acquire(self._gone, self.agent.run_timeout_s)
        try:
            return fn()
        finally:
            self.agent.slot.release()

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, agent: Agent, log: bool = True):
        handler = type("BoundHandler", (Handler,), {"agent": agent})
        super().__init__(address, handler)
        self.agent = agent
        self.log = log
        self.scheme = "http"

    def handle_error(self, request, client_address):
        """One line, not a traceback: failed TLS handshakes, timeouts and resets are the client's."""
        import sys

        exc = sys.exc_info()[1]
        if self.log:
            print(f"edgeforge agent: connection from {client_address[0]}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


def read_token(token_file: str | None) -> str:
    from edgeforge.errors import BadInput

    if token_file:
        p = Path(token_file)
        if not p.is_file():
            raise BadInput(f"--token-file {p}: no such file (write a long random token into it, e.g. "
                           f"`python -c 'import secrets; print(secrets.token_urlsafe(32))' > {p}`)")
        token = p.read_text().strip()
        if not token:
            raise BadInput(f"--token-file {p}: the file is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise BadInput(f"no token: pass --token-file FILE or set {TOKEN_ENV} (never on the command line)")
    return token


def tls_context(cert: str | os.PathLike, key: str | os.PathLike) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) from a PEM certificate chain and its key."""
    from edgeforge.errors import BadInput

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise BadInput(f"--tls-cert {cert} / --tls-key {key}: cannot load them ({e}); PEM files expected") from e
    return ctx


def serve(host: str = "127.0.0.1", port: int = 8765, token: str = "", ready=None, log: bool = True,
          tls: ssl.SSLContext | None = None, **agent_options) -> None:
    """Run the agent until SIGINT/SIGTERM; its temporary files are removed on the way out. With
    `tls` the agent speaks HTTPS (the handshake runs in each connection's thread, under the read
    timeout, so a slow client cannot hold up the others)."""
    import signal

    agent = Agent(token, **agent_options)
    server = AgentServer((host, port), agent, log=log)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        server.scheme = "https"

    def janitor():
        while True:
            time.sleep(min(30.0, max(agent.model_ttl_s / 4, 0.5)))
            agent.expire()

    threading.Thread(target=janitor, daemon=True).start()

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        agent.close()
