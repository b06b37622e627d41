"""Artifact directories and their manifest (design.md, "The path a model takes").

Torch-free: the agent and the runtimes read manifests on devices that have no torch.

Every write is atomic (temp file in the same directory + rename), so a failed step leaves the
previous state intact. `manifest.json` records, per step, the command, the inputs' hash (a step
whose inputs have not changed is skipped) and every file it produced with its sha256.

Several steps may run on one artifact at once (two `edgeforge quantize` methods, the cells of an
`edgeforge build`): a step's record is a read-modify-write of manifest.json under an exclusive
lock on `.manifest.lock` beside it, re-reading the file inside the lock, so no step loses
another's record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
LOCK = ".manifest.lock"
MANIFEST_SCHEMA_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates files 0600; artifacts are shared (CI, devices), so give them the
        # permissions an ordinary file would get under the current umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# how to rebuild a step's files, by step kind (export, int8-<method>, compile/<target>/<precision>)
_REDO = {"export": "export (or import) the model again with --force",
         "int8": "quantize again with --force", "compile": "compile again with --force"}


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout_s: float = 600.0) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if absent) between processes and threads.

    POSIX `flock` (Linux, macOS; on a local file system); on Windows `msvcrt.locking`. Waits up to
    `timeout_s`, then raises TimeoutError naming the lock file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout_s
        try:
            import fcntl

            def try_lock() -> bool:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    return False

            def unlock() -> None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except ImportError:  # Windows
            import msvcrt

            def try_lock() -> bool:
                try:
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                    return True
                except OSError:
                    return False

            def unlock() -> None:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        while not try_lock():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: still locked by another edgeforge step after {timeout_s:.0f} s")
            time.sleep(0.02)
        try:
            yield
        finally:
            unlock()
    finally:
        os.close(fd)


class Manifest:
    """`<artifact>/manifest.json`: one entry per step (export, int8-<method>, <target>, ...).

    The object holds the manifest as read; `record` and `save` merge into what is on disk at the
    time (under the artifact's lock), so concurrent steps keep each other's records.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / MANIFEST
        self.lock_path = self.root / LOCK
        self.data = self._read()
        self._changed_keys: set[str] = set()  # top-level keys set() by this object
        self._changed_steps: set[str] = set()  # steps recorded by this object

    def _read(self) -> dict:
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as e:
                from edgeforge.errors import BadInput

                raise BadInput(f"{self.path}: not valid JSON ({e}); remove it or export again") from e
        else:
            data = {"schema_version": MANIFEST_SCHEMA_VERSION, "steps": {}}
        data.setdefault("steps", {})
        return data

    def reload(self) -> None:
        """Read the manifest again (steps other processes recorded since)."""
        self.data = self._read()

    @property
    def steps(self) -> dict[str, dict]:
        return self.data["steps"]

    def step(self, name: str) -> dict | None:
        return self.steps.get(name)

    def is_up_to_date(self, name: str, inputs_hash: str) -> bool:
        """True when step `name` ran with the same inputs and its files are still intact."""
        step = self.steps.get(name)
        if not step or step.get("inputs_hash") != inputs_hash:
            return False
        for rel, digest in step.get("files", {}).items():
            p = self.root / rel
            if not p.exists() or sha256_file(p) != digest:
                return False
        return True

    def recorded(self, path: str | os.PathLike) -> tuple[str, str] | None:
        """(step, sha256) of the step that recorded `path` (the latest one), or None."""
        try:
            rel = str(Path(path).resolve().relative_to(self.root.resolve()))
        except ValueError:
            return None
        hit = None
        for name, step in self.steps.items():
            digest = (step.get("files") or {}).get(rel)
            if digest is not None:
                hit = (name, digest)
        return hit

    def verify(self, *paths: str | os.PathLike) -> None:
        """Raise BadInput naming the first of `paths` that differs from the sha256 its step recorded
        (truncated, edited, replaced) or is missing: loading it would fail with a protobuf
        traceback, or worse, run a model the manifest does not describe. Unrecorded files pass."""
        from edgeforge.errors import BadInput

        for p in paths:
            hit = self.recorded(p)
            if hit is None:
                continue
            step, digest = hit
            again = _REDO.get(step.split("/")[0].split("-")[0], "run that step again with --force")
            if not Path(p).is_file():
                raise BadInput(f"{p}: missing, though {self.path} records it (step {step!r}); {again}")
            actual = sha256_file(p)
            if actual != digest:
                raise BadInput(f"{p}: its sha256 ({actual[:16]}...) is not the one {self.path.name} recorded when step "
                               f"{step!r} wrote it ({digest[:16]}...): the file was truncated, edited or replaced "
                               f"since; {again}")

    def record(self, name: str, entry: dict, files: list[str | os.PathLike] = ()) -> dict:
        """Record a finished step with the sha256 of each produced file, and save atomically."""
        entry = dict(entry)
        entry["files"] = {
            str(Path(f).resolve().relative_to(self.root.resolve())): sha256_file(f) for f in files
        }
        entry.setdefault("finished_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.steps[name] = entry
        self._changed_steps.add(name)
        self.save()
        return entry

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self._changed_keys.add(key)

    def save(self) -> None:
        """Write this object's recorded steps and set keys into the manifest on disk, under the
        artifact's lock: re-read, merge, write atomically. Steps others recorded are kept."""
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_path):
            disk = self._read()
            for key in self._changed_keys:
                disk[key] = self.data[key]
            for name in self._changed_steps:
                disk["steps"][name] = self.data["steps"][name]
            write_json_atomic(self.path, disk)
            self.data = disk
