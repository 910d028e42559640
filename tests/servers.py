"""Real servers for tests, on 127.0.0.1 and a free port: MLflow (sqlite store, artifacts
served over HTTP) and Prefect (its own PREFECT_HOME).

``stop`` and ``start`` take one down and bring it back on the same port and store, so a test can
cut the tracker off mid-run.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """A server started as a subprocess in a session of its own; ``health`` is the path that
    answers 200 once it is up."""
    name = "server"
    health = "/health"

    def __init__(self, root: str | os.PathLike, port: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "server.log"
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict:
        return dict(os.environ)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        """Start the server (if it is not running) and wait until /health answers."""
        if self.running:
            return self
        with open(self.log, "ab") as log:
            # A session of its own, so that stop() reaches the uvicorn worker too.
            self._process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                             env=self.environment(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _answers(f"{self.uri}{self.health}"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} did not come up on {self.uri}:\n{tail}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        """Stop the server and its worker; returns once the port refuses connections."""
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        except ProcessLookupError:
            pass
        self._process = None
        deadline = time.monotonic() + 15
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class MlflowServer(ServerProcess):
    name = "mlflow server"

    def command(self) -> list[str]:
        return [str(Path(sys.executable).with_name("mlflow")), "server",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]

    def environment(self) -> dict:
        return dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true",
                    # The job runner is a second process that only slows the start.
                    MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")


class PrefectServer(ServerProcess):
    name = "prefect server"
    health = "/api/health"

    @property
    def api_url(self) -> str:
        return f"{self.uri}/api"

    def command(self) -> list[str]:
        return [str(Path(sys.executable).with_name("prefect")), "server", "start",
                "--host", "127.0.0.1", "--port", str(self.port)]

    def environment(self) -> dict:
        return dict(os.environ, PREFECT_HOME=str(self.root / "home"),
                    PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
