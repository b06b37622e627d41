"""Artifact files and their manifest, on real files: hashes, atomic writes that leave nothing
half-written, the lock between steps, and verification of what a step recorded.

Written against the survivors of mutation testing (benchmarks/mutation.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

from edgeforge.artifacts import (LOCK, MANIFEST, MANIFEST_SCHEMA_VERSION, Manifest, atomic_path, file_lock,
                                 sha256_file, sha256_json, write_bytes_atomic, write_json_atomic,
                                 write_text_atomic)
from edgeforge.errors import BadInput


def _leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- hashes
@pytest.mark.parametrize("size,chunk", [(0, 1 << 20), (1, 1 << 20), (1000, 7), (4096, 1024)])
def test_sha256_file_every_chunking(tmp_path, size, chunk):
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert sha256_file(p, chunk) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(p)) == hashlib.sha256(data).hexdigest()


def test_sha256_json_is_key_order_independent_and_exact(tmp_path):
    a = {"b": 1, "a": [1, 2, {"y": 2, "x": 1}]}
    b = {"a": [1, 2, {"x": 1, "y": 2}], "b": 1}
    assert sha256_json(a) == sha256_json(b)
    assert sha256_json(a) == hashlib.sha256(b'{"a": [1, 2, {"x": 1, "y": 2}], "b": 1}').hexdigest()
    assert sha256_json({"p": tmp_path}) == sha256_json({"p": str(tmp_path)})  # paths hash as their text
    assert sha256_json({"a": [1, 2]}) != sha256_json({"a": [2, 1]})


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_write_replaces_whole_file_with_ordinary_permissions(tmp_path):
    final = tmp_path / "deep" / "er" / "model.onnx"
    old = os.umask(0o027)
    try:
        write_bytes_atomic(final, b"abc")
    finally:
        os.umask(old)
    assert final.read_bytes() == b"abc"
    assert final.stat().st_mode & 0o777 == 0o640  # 0666 less the umask, not mkstemp's 0600
    old = os.umask(0)
    try:
        write_bytes_atomic(final, b"abc")
        assert final.stat().st_mode & 0o777 == 0o666
        with file_lock(tmp_path / "shared" / LOCK):  # another user's step must be able to open it
            assert (tmp_path / "shared" / LOCK).stat().st_mode & 0o777 == 0o666
    finally:
        os.umask(old)
    write_text_atomic(final, "é")
    assert final.read_bytes() == "é".encode()
    assert _leftovers(final.parent) == []


def test_atomic_path_temp_file_is_beside_the_target(tmp_path):
    final = tmp_path / "out" / "a.json"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.exists() and tmp.name.startswith(".a.json.")
        assert tmp.name.endswith(".tmp") and not final.exists()
        tmp.write_text("x")
    assert final.read_text() == "x" and not tmp.exists()


def test_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    final = tmp_path / "m.json"
    final.write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("crash mid-write")
    assert final.read_text() == "previous"
    assert _leftovers(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["m.json"]
    # a block that removes its own temp file: nothing to clean, nothing raised by the cleanup
    with pytest.raises(FileNotFoundError):
        with atomic_path(final) as tmp:
            tmp.unlink()
    assert final.read_text() == "previous"


def test_write_json_atomic_format(tmp_path):
    p = tmp_path / "q.json"
    write_json_atomic(p, {"b": 1, "a": tmp_path})
    assert p.read_text() == '{\n  "b": 1,\n  "a": "' + str(tmp_path) + '"\n}\n'


# ----------------------------------------------------------------------------- lock
def test_file_lock_is_exclusive_and_times_out_naming_the_lock(tmp_path):
    lock = tmp_path / "sub" / LOCK
    with file_lock(lock):
        assert lock.exists()
        errors = []

        def other():
            try:
                with file_lock(lock, timeout_s=0.2):
                    errors.append("acquired a held lock")
            except TimeoutError as e:
                errors.append(str(e))

        t0 = time.monotonic()
        th = threading.Thread(target=other)
        th.start()
        th.join()
        assert time.monotonic() - t0 >= 0.2
    assert errors == [f"{lock}: still locked by another edgeforge step after 0 s"]
    # released on exit: taken again at once, and released on an exception too
    with pytest.raises(KeyError):
        with file_lock(lock, timeout_s=0.0):
            raise KeyError("x")
    with file_lock(lock, timeout_s=0.0):
        pass


def test_file_lock_waits_for_release(tmp_path):
    lock = tmp_path / LOCK
    got = []

    def waiter():
        with file_lock(lock, timeout_s=5.0):
            got.append(1)

    with file_lock(lock):
        th = threading.Thread(target=waiter)
        th.start()
        time.sleep(0.1)
        assert got == []
    th.join(5)
    assert got == [1]


# ----------------------------------------------------------------------------- manifest
def _files(root, **contents):
    out = []
    for name, text in contents.items():
        p = root / "fp32" / f"{name}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        out.append(p)
    return out


def test_new_manifest_and_bad_json(tmp_path):
    m = Manifest(tmp_path / "art")
    assert m.data == {"schema_version": MANIFEST_SCHEMA_VERSION, "steps": {}} and m.steps == {}
    assert m.path == tmp_path / "art" / MANIFEST and m.lock_path == tmp_path / "art" / LOCK
    assert m.step("export") is None
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / MANIFEST).write_text("{trunc")
    with pytest.raises(BadInput, match=r"manifest.json: not valid JSON .*; remove it or export again"):
        Manifest(tmp_path / "art")
    (tmp_path / "art" / MANIFEST).write_text('{"schema_version": 1}')
    assert Manifest(tmp_path / "art").steps == {}


def test_record_hashes_files_relative_and_saves(tmp_path):
    art = tmp_path / "art"
    m = Manifest(art)
    a, b = _files(art, model="weights", extra="x")
    e = m.record("export", {"command": "edgeforge export", "inputs_hash": "h1"}, [a, str(b)])
    assert e["files"] == {"fp32/model.bin": sha256_file(a), "fp32/extra.bin": sha256_file(b)}
    assert e["command"] == "edgeforge export" and len(e["finished_at"]) == 20 and e["finished_at"].endswith("Z")
    disk = json.loads((art / MANIFEST).read_text())
    assert disk["steps"]["export"] == e and disk["schema_version"] == 1
    assert m.step("export") == e
    e2 = m.record("int8-minmax", {"finished_at": "2020-01-01T00:00:00Z"})
    assert e2 == {"finished_at": "2020-01-01T00:00:00Z", "files": {}}
    assert _leftovers(art) == []


def test_is_up_to_date(tmp_path):
    art = tmp_path / "art"
    m = Manifest(art)
    (a,) = _files(art, model="weights")
    m.record("export", {"inputs_hash": "h1"}, [a])
    assert m.is_up_to_date("export", "h1")
    assert not m.is_up_to_date("export", "h2")
    assert not m.is_up_to_date("int8-minmax", "h1")
    a.write_text("weightz")
    assert not m.is_up_to_date("export", "h1")
    a.unlink()
    assert not m.is_up_to_date("export", "h1")
    m.record("none", {"inputs_hash": "h3"})
    assert m.is_up_to_date("none", "h3")


def test_a_step_recorded_without_files_is_up_to_date_on_its_hash(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / MANIFEST).write_text(json.dumps({"schema_version": 1, "steps": {"calib": {"inputs_hash": "h"}}}))
    m = Manifest(art)
    assert m.is_up_to_date("calib", "h") and not m.is_up_to_date("calib", "x")


def test_recorded_latest_step_wins_and_outside_root(tmp_path):
    art = tmp_path / "art"
    m = Manifest(art)
    (a,) = _files(art, model="v1")
    m.record("export", {}, [a])
    d1 = sha256_file(a)
    assert m.recorded(a) == ("export", d1)
    assert m.recorded(art / "fp32" / ".." / "fp32" / "model.bin") == ("export", d1)
    a.write_text("v2")
    m.record("int8-minmax", {}, [a])
    assert m.recorded(a) == ("int8-minmax", sha256_file(a))
    assert m.recorded(art / "fp32" / "other.bin") is None
    assert m.recorded(tmp_path / "elsewhere.bin") is None


@pytest.mark.parametrize("step,hint", [
    ("export", "export (or import) the model again with --force"),
    ("int8-minmax", "quantize again with --force"),
    ("compile/cpu-openvino/int8-minmax", "compile again with --force"),
    ("cpu-ort", "run that step again with --force"),
])
def test_verify_names_the_file_and_how_to_redo(tmp_path, step, hint):
    art = tmp_path / "art"
    m = Manifest(art)
    (a,) = _files(art, model="weights")
    m.record(step, {}, [a])
    m.verify(a)  # intact: passes
    m.verify(art / "unrecorded.bin", tmp_path / "outside.bin")  # unrecorded files pass, even missing ones
    a.write_text("weights, edited")
    with pytest.raises(BadInput) as e:
        m.verify(a)
    msg = str(e.value)
    assert msg.startswith(f"{a}: its sha256 ({sha256_file(a)[:16]}...) is not the one manifest.json recorded")
    assert f"step {step!r}" in msg and msg.endswith(f"since; {hint}")
    a.unlink()
    with pytest.raises(BadInput, match="missing, though") as e:
        m.verify(a)
    assert str(e.value) == f"{a}: missing, though {m.path} records it (step {step!r}); {hint}"
    a.mkdir()  # a directory where the file was is not the file
    with pytest.raises(BadInput, match="missing"):
        m.verify(a)


def test_verify_checks_every_path_given(tmp_path):
    art = tmp_path / "art"
    m = Manifest(art)
    a, b = _files(art, one="1", two="2")
    m.record("export", {}, [a, b])
    b.write_text("changed")
    with pytest.raises(BadInput, match="two.bin"):
        m.verify(a, b)
    with pytest.raises(BadInput, match="two.bin"):  # an unrecorded path first does not end the check
        m.verify(art / "unrecorded.bin", b)


def test_finished_at_is_utc_whatever_the_local_zone(tmp_path, monkeypatch):
    import re

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30: a local time would be off by hours
    time.tzset()
    try:
        before = time.gmtime()
        e = Manifest(tmp_path / "art").record("export", {})
        after = time.gmtime()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["finished_at"])
    stamp = time.strptime(e["finished_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert time.strftime("%Y%m%d%H%M%S", before) <= time.strftime("%Y%m%d%H%M%S", stamp) <= \
        time.strftime("%Y%m%d%H%M%S", after)


def test_concurrent_steps_keep_each_others_records(tmp_path):
    art = tmp_path / "art"
    (a,) = _files(art, model="w")
    m1, m2 = Manifest(art), Manifest(art)  # both read the empty manifest
    m1.record("int8-minmax", {"inputs_hash": "1"}, [a])
    m2.set("recipe", "tiny")
    m2.record("int8-mse", {"inputs_hash": "2"})
    disk = json.loads((art / MANIFEST).read_text())
    assert set(disk["steps"]) == {"int8-minmax", "int8-mse"} and disk["recipe"] == "tiny"
    assert set(m2.steps) == {"int8-minmax", "int8-mse"}  # m2 now holds what is on disk
    m1.set("note", "n")
    m1.save()
    disk = json.loads((art / MANIFEST).read_text())
    assert disk["recipe"] == "tiny" and disk["note"] == "n" and set(disk["steps"]) == {"int8-minmax", "int8-mse"}
    # a key set by m2 is not overwritten by m1, which never set it
    m2.set("recipe", "tiny2")
    m2.save()
    m1.save()
    assert json.loads((art / MANIFEST).read_text())["recipe"] == "tiny2"
    m3 = Manifest(art)
    m1.record("export", {})
    assert "export" not in m3.steps
    m3.reload()
    assert set(m3.steps) == {"int8-minmax", "int8-mse", "export"}
    assert _leftovers(art) == []


def test_save_creates_the_artifact_directory(tmp_path):
    m = Manifest(tmp_path / "new" / "art")
    m.set("recipe", "r")
    m.save()
    assert json.loads((tmp_path / "new" / "art" / MANIFEST).read_text()) == {
        "schema_version": 1, "steps": {}, "recipe": "r"}
    assert (tmp_path / "new" / "art" / LOCK).exists()
