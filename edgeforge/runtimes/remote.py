"""Remote runner: a client for the edgeforge agent running on a device (Jetson, Raspberry Pi, Mac).

The protocol is plain HTTP + JSON (stdlib only, so a device needs nothing extra). All paths are
under the agent's base URL, e.g. `http://jetson.local:8765`:

    GET    /v1/info                 -> {"edgeforge": str, "device": str, "runtimes": {name: version},
                                        "auth": "bearer", "max_upload_mb": float, "busy": bool, ...}
    POST   /v1/models               body: the model file (application/octet-stream): ONNX, a TensorRT
                                    engine, or a zip (OpenVINO IR: model.xml + model.bin; NAME.mlpackage/)
                                    header X-Edgeforge-Spec: {"runtime": str, "options": {...},
                                                              "filename": "model.onnx"}
                                    -> {"model_id": str, "inputs": [{name, shape, dtype}],
                                        "outputs": [str], "load_ms": float,
                                        "runtime": {runtime, version, device, options, versions}}
    POST   /v1/models/{id}/infer    body: npz of the feed (np.savez) -> npz of the outputs
    POST   /v1/models/{id}/bench    body: {"warmup": int, "iterations": int, "min_time_s": float,
                                           "seed": int, "block_size": int}
                                    (timed with the last feed sent to /infer, else one made from seed)
                                    -> {"samples_ms": [float], "first_inference_ms": float,
                                        "peak_rss_delta_mb": float | null}
    DELETE /v1/models/{id}          -> {"deleted": id}

An agent started with `--tls-cert/--tls-key` is reached as https://...; the client checks its
certificate against the system's CAs or the PEM file named by EDGEFORGE_AGENT_CA.
Every request but `GET /v1/info` carries `Authorization: Bearer <token>`; the client reads the
token from EDGEFORGE_AGENT_TOKEN or the file named by EDGEFORGE_AGENT_TOKEN_FILE (never from a
command line, where other users of the machine could read it). The server is
`edgeforge agent serve` (edgeforge.agent.server): 401 without the token, 413 over its upload
limit, 415 for a file that is not a model, 503 "busy" when its queue is full, 504 past its run
timeout.

Errors come back as a non-2xx status with {"error": str}. Latency is measured on the device
(`device_latency`), so network time never enters a report's numbers.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeforge.errors import BadInput, EdgeforgeError, NotAvailable
from edgeforge.runtimes.base import Runner, RunnerInfo, TensorSpec

API = "/v1"
TOKEN_ENV = "EDGEFORGE_AGENT_TOKEN"
TOKEN_FILE_ENV = "EDGEFORGE_AGENT_TOKEN_FILE"
CA_ENV = "EDGEFORGE_AGENT_CA"  # PEM file of the CA (or self-signed certificate) an https agent's certificate chains to


def _tls_context():
    """For https agents: the system's trusted CAs, or the file named by $EDGEFORGE_AGENT_CA."""
    import ssl

    ca = os.environ.get(CA_ENV)
    if ca and not Path(ca).is_file():
        raise BadInput(f"{CA_ENV}={ca}: no such file")
    return ssl.create_default_context(cafile=ca or None)


def agent_token(token: str | None = None) -> str | None:
    """The token to send: given, else $EDGEFORGE_AGENT_TOKEN, else the file $EDGEFORGE_AGENT_TOKEN_FILE."""
    if token:
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    if os.environ.get(TOKEN_FILE_ENV):
        p = Path(os.environ[TOKEN_FILE_ENV])
        if not p.is_file():
            raise BadInput(f"{TOKEN_FILE_ENV}={p}: no such file")
        return p.read_text().strip()
    return None


class AgentError(EdgeforgeError, RuntimeError):
    """The agent answered with an error status, or dropped the connection mid-request (exit 2)."""


def _request(url: str, method: str = "GET", data: bytes | None = None, headers: Mapping[str, str] | None = None,
             timeout: float = 30.0) -> bytes:
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        context = _tls_context() if url.startswith("https:") else None
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            msg = json.loads(body).get("error", body.decode(errors="replace"))
        except (json.JSONDecodeError, AttributeError):
            msg = body.decode(errors="replace")
        raise AgentError(f"{method} {url}: HTTP {e.code}: {msg}") from e
    except (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead) as e:
        raise AgentError(f"{method} {url}: the agent closed the connection before answering (it stopped, "
                         f"crashed or was killed mid-run): {e}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, (ConnectionResetError, http.client.RemoteDisconnected)):
            raise AgentError(f"{method} {url}: the agent closed the connection before answering (it stopped, "
                             f"crashed or was killed mid-run): {e.reason}") from e
        raise NotAvailable(f"agent at {url} is unreachable: {e.reason}") from e
    except (TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NotAvailable(f"agent at {url} is unreachable: {reason}") from e


def probe(base_url: str, timeout: float = 3.0) -> dict:
    """GET /v1/info; raises NotAvailable with the reason when the agent does not answer."""
    body = _request(base_url.rstrip("/") + API + "/info", timeout=timeout)
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise NotAvailable(f"{base_url} answered, but not as an edgeforge agent (no JSON at {API}/info)") from e


def _model_bytes(path: Path) -> bytes:
    """The upload for `path`: the file, or a zip for a folder (.mlpackage) or an OpenVINO IR (.xml + .bin)."""
    import zipfile

    if path.is_dir() or path.suffix == ".xml":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            if path.is_dir():
                for f in sorted(path.rglob("*")):
                    if f.is_file():
                        z.write(f, str(Path(path.name) / f.relative_to(path)))
            else:
                z.write(path, "model.xml")
                z.write(path.with_suffix(".bin"), "model.bin")
        return buf.getvalue()
    return path.read_bytes()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class RemoteRunner(Runner):
    """Runs a model on an edgeforge agent (see the module docstring for the protocol).

    Args:
        base_url: the agent, e.g. "http://10.0.0.7:8765".
        model_path: the file to upload (.onnx, .engine, ...).
        runtime: the runtime the agent should use ("onnxruntime", "tensorrt", ...).
        options: that runtime's options (as in a target profile).
        token: the agent's token (default: $EDGEFORGE_AGENT_TOKEN or the file $EDGEFORGE_AGENT_TOKEN_FILE).
    """

    def _auth(self, headers: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**(headers or {}), **({"Authorization": f"Bearer {self.token}"} if self.token else {})}

    runtime_name = "remote"

    def __init__(self, base_url: str, model_path: str | os.PathLike, runtime: str,
                 options: Mapping[str, Any] | None = None, timeout: float = 600.0, name: str | None = None,
                 token: str | None = None):
        super().__init__(name or f"remote-{runtime}")
        self.token = agent_token(token)
        self.base_url = base_url.rstrip("/")
        self.model_path = Path(model_path)
        self.runtime = runtime
        self.options = dict(options or {})
        self.timeout = timeout
        self.model_id: str | None = None
        self.remote: dict = {}
        self.agent_info: dict = {}

    def _activate(self) -> None:
        if not self.model_path.exists():
            raise BadInput(f"{self.model_path}: no such model file")
        self.agent_info = probe(self.base_url)
        spec = {"runtime": self.runtime, "options": self.options, "filename": self.model_path.name}
        body = _request(f"{self.base_url}{API}/models", "POST", _model_bytes(self.model_path),
                        self._auth({"Content-Type": "application/octet-stream", "X-Edgeforge-Spec": json.dumps(spec)}),
                        timeout=self.timeout)
        self.remote = json.loads(body)
        self.model_id = self.remote["model_id"]
        # The device's own load time, not the upload: that is what a deployment pays.
        if self.remote.get("load_ms") is not None:
            self.device_load_time_s = float(self.remote["load_ms"]) / 1e3

    def _deactivate(self) -> None:
        if self.model_id is not None:
            try:
                _request(f"{self.base_url}{API}/models/{self.model_id}", "DELETE", headers=self._auth(), timeout=30)
            except (AgentError, NotAvailable):
                pass  # the agent went away: nothing left to free
            self.model_id = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        body = _request(f"{self.base_url}{API}/models/{self.model_id}/infer", "POST", _npz_bytes(feed),
                        self._auth({"Content-Type": "application/octet-stream"}), timeout=self.timeout)
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def device_latency(self, feed: Mapping[str, np.ndarray], warmup: int, iterations: int,
                       min_time_s: float, seed: int = 0) -> dict:
        """Latency measured on the device by the agent (see the module docstring)."""
        settings = {"warmup": warmup, "iterations": iterations, "min_time_s": min_time_s, "seed": seed}
        if feed is not None:  # the agent times the last feed sent to /infer: make it this one
            self._infer(feed)
        body = _request(f"{self.base_url}{API}/models/{self.model_id}/bench", "POST",
                        json.dumps(settings).encode(), self._auth({"Content-Type": "application/json"}),
                        timeout=self.timeout)
        return json.loads(body)

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec(i["name"], tuple(d if isinstance(d, int) else None for d in i["shape"]), i["dtype"])
                for i in self.remote.get("inputs", [])]

    def output_names(self) -> list[str]:
        return list(self.remote.get("outputs", []))

    def info(self) -> RunnerInfo:
        r = self.remote.get("runtime", {})
        return RunnerInfo(
            runtime=r.get("runtime", self.runtime),
            version=r.get("version", "unknown"),
            device=r.get("device", self.agent_info.get("device", self.base_url)),
            options={**r.get("options", self.options), "agent": self.base_url},
            versions={**r.get("versions", {}), "agent_edgeforge": str(self.agent_info.get("edgeforge"))},
        )
