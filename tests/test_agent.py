"""`edgeforge agent serve` as a real process on 127.0.0.1 (torch blocked in it), driven by the
real client (RemoteRunner, `edgeforge bench --device`) and by raw HTTP for what a client would
never send: missing or wrong tokens, oversized, truncated and non-model uploads, pickles, clients
that disconnect, a full queue, an agent killed mid-benchmark, and a load of mixed requests."""

from __future__ import annotations

import http.client
import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import numpy as np
import pytest

from edgeforge.runtimes import create_runner
from edgeforge.runtimes.remote import AgentError, RemoteRunner
from test_agent_support import ROOT, AgentProcess, agent  # noqa: F401  (fixture)
from test_bench_support import SHAPE


def _feed(seed=0):
    return {"input": np.random.default_rng(seed).standard_normal((1, *SHAPE)).astype(np.float32)}


def _npz(arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _http(url, method, path, body=b"", headers=None, timeout=30):
    u = urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if r.getheader("Content-Type") == "application/json" else data)
    finally:
        c.close()


def _auth(a):
    return {"Authorization": f"Bearer {a.token}"}


def _upload(a, data: bytes, runtime="onnxruntime", filename="model.onnx", token=True):
    spec = json.dumps({"runtime": runtime, "options": {"threads": 1}, "filename": filename})
    return _http(a.url, "POST", "/v1/models", data, {**(_auth(a) if token else {}), "X-Edgeforge-Spec": spec,
                                                      "Content-Type": "application/octet-stream"})


def test_bench_through_the_agent_gives_a_local_bench_report(agent, tiny_art, tmp_path):  # noqa: F811
    """`edgeforge bench ART --target rpi5-ort --device URL` end to end (the README's command): the
    report has the fields of a local bench, measured on the device, with the agent's description."""
    import shutil

    art = shutil.copytree(tiny_art, tmp_path / "art")
    env = {**os.environ, "EDGEFORGE_AGENT_TOKEN_FILE": str(agent.token_file), "OMP_NUM_THREADS": "1"}
    args = ["--iterations", "20", "--min-time", "0", "--warmup", "2", "--block-size", "5"]
    for target, extra in (("rpi5-ort", ["--device", agent.url]), ("cpu-ort", ["--threads", "1"])):
        proc = subprocess.run([sys.executable, "-m", "edgeforge.cli", "bench", str(art), "--target", target,
                               "--precision", "int8-ort", *args, *extra], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads((art / "reports" / "rpi5-ort-int8-ort.json").read_text())
    local = json.loads((art / "reports" / "cpu-ort-int8-ort.json").read_text())
    assert remote["status"] == local["status"] == "measured"
    for key in ("latency", "memory", "efficiency", "accuracy", "kernel_fidelity", "runtime", "model", "target"):
        assert (remote[key] is None) == (local[key] is None), key
    assert set(remote["latency"]) == set(local["latency"])
    assert remote["latency"]["measured_on"] == "device" and remote["latency"]["iterations"] >= 20
    assert remote["latency"]["cold_load_ms"] > 0 and remote["runtime"]["options"]["agent"] == agent.url
    assert "agent at" in remote["target"]["reached"] and "on " in remote["runtime"]["device"]
    assert remote["kernel_fidelity"]["sqnr_db"] > 30  # same ONNX Runtime kernels on the agent
    assert remote["model"]["sha256"] == local["model"]["sha256"]
    assert agent.model_folders() == []  # the bench deleted its models


def _bench_cli(art, agent, *extra, iterations=20, min_time=0.0):
    env = {**os.environ, "EDGEFORGE_AGENT_TOKEN_FILE": str(agent.token_file), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "edgeforge.cli", "bench", str(art), "--target", "rpi5-ort",
                             "--device", agent.url, "--iterations", str(iterations), "--min-time", str(min_time),
                             "--warmup", "1", "--block-size", "5", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_bench_commands_each_get_their_own_report(agent, tiny_art, tmp_path):  # noqa: F811
    """Three `edgeforge bench --device` processes at once on one agent: queued one run at a time,
    each report is its own (its artifact, its iteration count), and no model is left behind."""
    import shutil

    arts = [shutil.copytree(tiny_art, tmp_path / f"art{i}") for i in range(3)]
    procs = [_bench_cli(art, agent, "--precision", prec, iterations=10 + 10 * i)
             for i, (art, prec) in enumerate(zip(arts, ("fp32", "int8-ort", "fp32")))]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    for i, (art, prec) in enumerate(zip(arts, ("fp32", "int8-ort", "fp32"))):
        r = json.loads((art / "reports" / f"rpi5-ort-{prec}.json").read_text())
        assert r["status"] == "measured" and r["latency"]["iterations"] == 10 + 10 * i
        assert r["model"]["artifact"].endswith(f"art{i}") and r["model"]["precision"] == prec
    assert agent.model_folders() == []


def test_bench_command_against_an_agent_killed_mid_run_says_so(agent, tiny_art, tmp_path):  # noqa: F811
    import shutil

    art = shutil.copytree(tiny_art, tmp_path / "art")
    p = _bench_cli(art, agent, "--no-baseline", iterations=10, min_time=60)
    t0 = time.monotonic()
    while "busy\": true" not in json.dumps(_http(agent.url, "GET", "/v1/info")[1]) and time.monotonic() - t0 < 60:
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(agent.pid, signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert "closed the connection" in err and "killed mid-run" in err


def test_token_required_and_compared(agent, tiny_art):  # noqa: F811
    assert _http(agent.url, "GET", "/v1/info")[0] == 200  # the only open endpoint
    model = (tiny_art / "fp32" / "model.onnx").read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {agent.token}"},
                    {"Authorization": f"Bearer {agent.token}x"}):
        spec = json.dumps({"runtime": "onnxruntime", "options": {}})
        status, body = _http(agent.url, "POST", "/v1/models", model, {**headers, "X-Edgeforge-Spec": spec})
        assert status == 401 and "unauthorized" in body["error"], headers
        assert _http(agent.url, "DELETE", "/v1/models/x", headers=headers)[0] == 401
    assert agent.model_folders() == []
    with pytest.raises(AgentError, match="HTTP 401"):
        RemoteRunner(agent.url, tiny_art / "fp32" / "model.onnx", "onnxruntime", token="nope").activate()


def test_refused_uploads_leave_nothing_on_disk(tmp_path, tiny_art):  # noqa: F811
    a = AgentProcess(tmp_path, "--max-upload-mb", "1")
    try:
        model = (tiny_art / "fp32" / "model.onnx").read_bytes()
        assert len(model) < 2**20
        # over the limit: refused from Content-Length, before the body is read
        status, body = _upload(a, b"\0" * (2**20 + 10))
        assert status == 413 and "over this agent's limit" in body["error"]
        # a body shorter than announced, then the client stops sending
        u = urlparse(a.url)
        s = socket.create_connection((u.hostname, u.port))
        spec = json.dumps({"runtime": "onnxruntime"})
        s.sendall((f"POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {a.token}\r\n"
                   f"X-Edgeforge-Spec: {spec}\r\nContent-Length: {len(model)}\r\n\r\n").encode() + model[:1000])
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        reply = reply.decode()
        s.close()
        assert " 400 " in reply.splitlines()[0] and "truncated upload" in reply
        # a truncated model file (complete request), text, a pickle, an ELF, a zip of code
        import zipfile

        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w") as z:
            z.writestr("model.xml", "<net/>")
            z.writestr("evil.py", "print(1)")
        cases = [(model[: len(model) // 2], "onnxruntime", "truncated"),
                 (b"hello, this is not a model at all" * 4, "onnxruntime", "not a model"),
                 (pickle.dumps({"weights": np.zeros(3)}), "onnxruntime", "pickle"),
                 (b"\x7fELF" + b"\0" * 100, "onnxruntime", "executable"),
                 (zbuf.getvalue(), "openvino", "evil.py")]
        for data, runtime, why in cases:
            status, body = _upload(a, data, runtime=runtime)
            assert status == 415 and why in body["error"], (why, body)
        assert a.model_folders() == []
        status, body = _upload(a, model)  # and a good one still loads
        assert status == 200 and len(a.model_folders()) == 1
        assert _http(a.url, "DELETE", f"/v1/models/{body['model_id']}", headers=_auth(a))[0] == 200
        assert a.model_folders() == []
    finally:
        a.stop()
    assert not list(a.workdir.glob("edgeforge-agent-*"))  # shutdown removes the agent's folder


def test_options_that_name_files_or_libraries_are_refused(agent, tiny_art):  # noqa: F811
    model = (tiny_art / "fp32" / "model.onnx").read_bytes()
    for runtime, options, why in (
            ("tensorrt", {"plugin_library": "/tmp/evil.so"}, "not accepted"),
            ("onnxruntime", {"provider_options": {"trt_engine_cache_path": "/etc"}}, "name files"),
            ("onnxruntime", {"threads": "many"}, "must be a int"),
            ("onnxruntime", {"cache_dir": "/tmp"}, "not accepted")):
        spec = json.dumps({"runtime": runtime, "options": options, "filename": "model.onnx"})
        status, body = _http(agent.url, "POST", "/v1/models", model, {**_auth(agent), "X-Edgeforge-Spec": spec})
        assert status == 400 and why in body["error"], (options, body)
    assert agent.model_folders() == []


def test_pickle_disguised_as_npz_is_refused(agent, tiny_art):  # noqa: F811
    status, body = _upload(agent, (tiny_art / "fp32" / "model.onnx").read_bytes())
    mid = body["model_id"]
    obj = np.empty(1, dtype=object)
    obj[0] = {"x": 1}
    for data, why in ((pickle.dumps(_feed()), "pickle"), (_npz({"input": obj}), "pickled objects")):
        status, body = _http(agent.url, "POST", f"/v1/models/{mid}/infer", data, _auth(agent))
        assert status == 400 and why in body["error"], body
    status, out = _http(agent.url, "POST", f"/v1/models/{mid}/infer", _npz(_feed()), _auth(agent))
    assert status == 200


def test_concurrent_clients_are_queued_and_get_their_own_results(agent, tiny_art):  # noqa: F811
    path = tiny_art / "fp32" / "model.onnx"
    with create_runner("onnxruntime", path, threads=1) as local:
        expected = {i: local.infer(_feed(i))["logits"] for i in range(4)}
    results, errors = {}, []

    def client(i):
        try:
            with RemoteRunner(agent.url, path, "onnxruntime", {"threads": 1}) as r:
                out = r.infer(_feed(i))["logits"]
                res = r.device_latency(_feed(i), warmup=1, iterations=10 + 5 * i, min_time_s=0)
                results[i] = (out, res)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, (out, res) in results.items():
        np.testing.assert_allclose(out, expected[i], rtol=1e-5, atol=1e-6)
        assert len(res["samples_ms"]) == 10 + 5 * i  # its own settings
    assert agent.model_folders() == []


def test_full_queue_answers_busy_and_a_disconnected_client_frees_its_slot(tmp_path, tiny_art):  # noqa: F811
    a = AgentProcess(tmp_path, "--max-queue", "0")
    try:
        status, body = _upload(a, (tiny_art / "fp32" / "model.onnx").read_bytes())
        mid = body["model_id"]
        u = urlparse(a.url)
        s = socket.create_connection((u.hostname, u.port))
        settings = json.dumps({"warmup": 0, "iterations": 10, "min_time_s": 120}).encode()
        s.sendall((f"POST /v1/models/{mid}/bench HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {a.token}\r\n"
                   f"Content-Length: {len(settings)}\r\n\r\n").encode() + settings)
        time.sleep(1.0)
        status, body = _http(a.url, "POST", f"/v1/models/{mid}/infer", _npz(_feed()), _auth(a))
        assert status == 503 and "busy" in body["error"]
        s.close()  # the 120 s benchmark's client goes away: the agent notices and frees the slot
        t0 = time.monotonic()
        while True:
            status, body = _http(a.url, "POST", f"/v1/models/{mid}/infer", _npz(_feed()), _auth(a))
            if status == 200 or time.monotonic() - t0 > 20:
                break
            time.sleep(0.2)
        assert status == 200 and time.monotonic() - t0 < 20
    finally:
        a.stop()


def test_stalled_upload_and_overlong_run_time_out(tmp_path, tiny_art):  # noqa: F811
    a = AgentProcess(tmp_path, "--read-timeout", "1", "--run-timeout", "1.5")
    try:
        model = (tiny_art / "fp32" / "model.onnx").read_bytes()
        u = urlparse(a.url)
        s = socket.create_connection((u.hostname, u.port), timeout=30)
        spec = json.dumps({"runtime": "onnxruntime"})
        s.sendall((f"POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {a.token}\r\n"
                   f"X-Edgeforge-Spec: {spec}\r\nContent-Length: {len(model)}\r\n\r\n").encode() + model[:500])
        reply = b""  # the client keeps the connection open and sends nothing more
        while chunk := s.recv(4096):
            reply += chunk
        s.close()
        assert b" 408 " in reply.split(b"\r\n")[0] and b"stopped arriving" in reply
        status, body = _upload(a, model)
        mid = body["model_id"]
        status, body = _http(a.url, "POST", f"/v1/models/{mid}/bench",
                             json.dumps({"warmup": 0, "iterations": 5, "min_time_s": 30}).encode(), _auth(a))
        assert status == 504 and "run timeout" in body["error"]
        status, body = _http(a.url, "POST", f"/v1/models/{mid}/infer", _npz(_feed()), _auth(a))
        assert status == 200  # the slot was freed
        assert len(a.model_folders()) == 1
    finally:
        a.stop()
    assert not list(a.workdir.glob("edgeforge-agent-*"))


def test_agent_killed_mid_benchmark_gives_a_clear_error(tmp_path, tiny_art):  # noqa: F811
    a = AgentProcess(tmp_path)
    try:
        r = RemoteRunner(a.url, tiny_art / "fp32" / "model.onnx", "onnxruntime", {"threads": 1}, token=a.token)
        r.activate()
        threading.Timer(1.0, lambda: os.kill(a.pid, signal.SIGKILL)).start()
        with pytest.raises(AgentError, match="closed the connection"):
            r.device_latency(None, warmup=0, iterations=10, min_time_s=60)
        r.deactivate()  # the agent is gone: nothing to free, no error
    finally:
        a.stop()


def test_delete_during_a_benchmark_waits_for_it(agent, tiny_art):  # noqa: F811
    status, body = _upload(agent, (tiny_art / "fp32" / "model.onnx").read_bytes())
    mid = body["model_id"]
    out = {}

    def bench():
        out["bench"] = _http(agent.url, "POST", f"/v1/models/{mid}/bench",
                             json.dumps({"warmup": 0, "iterations": 5, "min_time_s": 1.5}).encode(), _auth(agent))

    t = threading.Thread(target=bench)
    t.start()
    time.sleep(0.5)
    status, body = _http(agent.url, "DELETE", f"/v1/models/{mid}", headers=_auth(agent))
    t.join()
    assert status == 200 and out["bench"][0] == 200 and len(out["bench"][1]["samples_ms"]) >= 5
    assert agent.model_folders() == []


def test_models_expire_with_their_files(tmp_path, tiny_art):  # noqa: F811
    a = AgentProcess(tmp_path, "--model-ttl", "1")
    try:
        status, body = _upload(a, (tiny_art / "fp32" / "model.onnx").read_bytes())
        assert status == 200 and len(a.model_folders()) == 1
        time.sleep(2.5)
        assert a.model_folders() == []
        status, body = _http(a.url, "POST", f"/v1/models/{body['model_id']}/infer", _npz(_feed()), _auth(a))
        assert status == 404 and "expired" in body["error"]
    finally:
        a.stop()


def test_load_of_mixed_requests_from_four_clients(agent, tiny_art):  # noqa: F811
    """200 requests, good and bad, from 4 clients at once: every good one succeeds, every bad one gets
    its 4xx, no model folder is left, and the agent's RSS grows by less than 64 MiB."""
    model = (tiny_art / "fp32" / "model.onnx").read_bytes()
    status, body = _upload(agent, model)
    shared = body["model_id"]
    _http(agent.url, "POST", f"/v1/models/{shared}/infer", _npz(_feed()), _auth(agent))
    rss0 = agent.rss_mb()
    bad_feed = pickle.dumps(_feed())
    plan = ["info", "infer", "bench", "upload", "no_token", "not_model", "pickle", "missing"] * 25
    failures, lock = [], threading.Lock()

    def one(kind, i):
        if kind == "info":
            return _http(agent.url, "GET", "/v1/info")[0] == 200
        if kind == "infer":
            st, out = _http(agent.url, "POST", f"/v1/models/{shared}/infer", _npz(_feed(i)), _auth(agent))
            return st == 200
        if kind == "bench":
            st, out = _http(agent.url, "POST", f"/v1/models/{shared}/bench",
                            json.dumps({"warmup": 0, "iterations": 5}).encode(), _auth(agent))
            return st == 200 and len(out["samples_ms"]) >= 5
        if kind == "upload":
            st, out = _upload(agent, model)
            return st == 200 and _http(agent.url, "DELETE", f"/v1/models/{out['model_id']}",
                                       headers=_auth(agent))[0] == 200
        if kind == "no_token":
            return _upload(agent, model, token=False)[0] == 401
        if kind == "not_model":
            return _upload(agent, b"not a model " * 20)[0] == 415
        if kind == "pickle":
            return _http(agent.url, "POST", f"/v1/models/{shared}/infer", bad_feed, _auth(agent))[0] == 400
        return _http(agent.url, "POST", "/v1/models/nope/infer", _npz(_feed()), _auth(agent))[0] == 404

    def client(k):
        for i in range(k, len(plan), 4):
            try:
                ok = one(plan[i], i)
            except Exception as e:  # noqa: BLE001
                ok = f"{type(e).__name__}: {e}"
            if ok is not True:
                with lock:
                    failures.append((plan[i], ok))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert _http(agent.url, "DELETE", f"/v1/models/{shared}", headers=_auth(agent))[0] == 200
    assert agent.model_folders() == []
    growth = agent.rss_mb() - rss0
    print(f"agent RSS {rss0:.1f} MiB -> +{growth:.1f} MiB after 200 mixed requests")  # shown with pytest -s
    assert growth < 64


def test_agent_modules_import_without_torch():
    code = ("import sys\n"
            "class B:\n"
            "    def find_spec(self, n, p=None, t=None):\n"
            "        if n == 'torch' or n.startswith('torch.'): raise ImportError('blocked')\n"
            "sys.meta_path.insert(0, B())\n"
            "import edgeforge.agent.server, edgeforge.runtimes.remote, edgeforge.build.spec, edgeforge.cli\n"
            "assert 'torch' not in sys.modules\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_tls_agent_with_a_self_signed_certificate(tmp_path, tiny_art, monkeypatch):  # noqa: F811
    """--tls-cert/--tls-key: the client reaches https://... trusting the certificate through
    EDGEFORGE_AGENT_CA; without it the certificate is refused; plain HTTP gets no answer."""
    import shutil

    from edgeforge.errors import NotAvailable

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    cert, key = tmp_path / "agent.pem", tmp_path / "agent.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    a = AgentProcess(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert a.url.startswith("https://")
        path = tiny_art / "fp32" / "model.onnx"
        monkeypatch.delenv("EDGEFORGE_AGENT_CA", raising=False)
        with pytest.raises(NotAvailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            RemoteRunner(a.url, path, "onnxruntime", token=a.token).activate()
        monkeypatch.setenv("EDGEFORGE_AGENT_CA", str(cert))
        with RemoteRunner(a.url, path, "onnxruntime", {"threads": 1}, token=a.token) as r, \
                create_runner("onnxruntime", path, threads=1) as local:
            np.testing.assert_allclose(r.infer(_feed())["logits"], local.infer(_feed())["logits"], rtol=1e-5)
            assert len(r.device_latency(_feed(), warmup=1, iterations=10, min_time_s=0.2)["samples_ms"]) >= 10
        plain = a.url.replace("https://", "http://")
        with pytest.raises((NotAvailable, AgentError)):
            RemoteRunner(plain, path, "onnxruntime", token=a.token).activate()
        assert a.model_folders() == []
    finally:
        a.stop()


def test_openvino_ir_upload_as_a_zip(agent, tiny_art, tmp_path):  # noqa: F811
    """An OpenVINO IR (model.xml + model.bin, as `edgeforge compile` writes it) travels as a zip."""
    import shutil

    from edgeforge.bench.compile import compile_artifact
    from edgeforge.runtimes import probe_runtime

    if probe_runtime("openvino") is not None:
        pytest.skip("OpenVINO is not installed")
    art = shutil.copytree(tiny_art, tmp_path / "art")
    ir = compile_artifact(art, "cpu-openvino", "fp32").path
    assert ir.suffix == ".xml"
    with RemoteRunner(agent.url, ir, "openvino", {"threads": 1}) as r, \
            create_runner("onnxruntime", art / "fp32" / "model.onnx", threads=1) as local:
        np.testing.assert_allclose(r.infer(_feed())["logits"], local.infer(_feed())["logits"], rtol=1e-4, atol=1e-4)
    assert agent.model_folders() == []
