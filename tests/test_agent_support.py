"""A real `edgeforge agent serve` process on 127.0.0.1 for tests, with torch blocked in it (a
device has only its runtime). No tests here."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_LAUNCH = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked: the agent must run without it")
    sys.meta_path.insert(0, Block())
    from edgeforge.cli import main
    sys.exit(main(sys.argv[1:]))
""")


class AgentProcess:
    """`edgeforge agent serve --port 0 ...` in a subprocess; `.url`, `.token`, `.workdir`, `.pid`."""

    def __init__(self, tmp: Path, *args: str):
        self.token = secrets.token_urlsafe(24)
        self.token_file = tmp / "agent.token"
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)
        self.workdir = tmp / "agent-work"
        cmd = [sys.executable, "-c", _LAUNCH, "agent", "serve", "--port", "0", "--token-file", str(self.token_file),
               "--workdir", str(self.workdir), "--quiet", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("EDGEFORGE_AGENT_TOKEN", None)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (https?://127\.0\.0\.1:\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"agent did not start: {line!r} {self.proc.stderr.read()[-3000:]}")
        self.url = m.group(1)
        self.pid = self.proc.pid

    def model_folders(self) -> list[Path]:
        return [p for d in self.workdir.glob("edgeforge-agent-*") for p in d.iterdir()]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def agent(tmp_path, monkeypatch):
    """A running agent; the client side gets its token through EDGEFORGE_AGENT_TOKEN_FILE."""
    a = AgentProcess(tmp_path)
    monkeypatch.setenv("EDGEFORGE_AGENT_TOKEN_FILE", str(a.token_file))
    monkeypatch.delenv("EDGEFORGE_AGENT_TOKEN", raising=False)
    yield a
    a.stop()
    time.sleep(0.1)
