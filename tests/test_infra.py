"""infra/: `make ui` (infra/ui.sh) with both servers on 127.0.0.1, their health endpoints, Ctrl-C
stopping both, a port in use refused with a message naming it; the rendered DeepSpeed
examples."""
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from servers import _port_open, free_port

SCRIPT = Path(__file__).resolve().parents[1] / "infra" / "ui.sh"


def start_ui(root: Path, mlflow_port: int, prefect_port: int) -> subprocess.Popen:
    env = dict(os.environ, UI_ROOT=str(root), BIN=str(Path(sys.executable).parent),
               MLFLOW_PORT=str(mlflow_port), PREFECT_PORT=str(prefect_port),
               PREFECT_HOME=str(root / "prefect-home"))
    return subprocess.Popen([str(SCRIPT), "start"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


@pytest.mark.slow
def test_make_ui_brings_both_servers_up_and_a_stop_signal_stops_both(tmp_path):
    # SIGTERM takes the same trap as Ctrl-C's SIGINT; SIGINT itself cannot be sent here: a
    # shell started in the background (as CI starts `make test`) ignores it for good
    mlflow_port, prefect_port = free_port(), free_port()
    ui = start_ui(tmp_path, mlflow_port, prefect_port)
    try:
        lines = []
        for line in ui.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        assert any(f"http://127.0.0.1:{mlflow_port}" in line for line in lines), lines
        assert healthy(f"http://127.0.0.1:{mlflow_port}/health")
        assert healthy(f"http://127.0.0.1:{prefect_port}/api/health")
        assert (tmp_path / ".ui" / "mlflow_uri").read_text().strip() == \
            f"http://127.0.0.1:{mlflow_port}"
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
    finally:
        if ui.poll() is None:
            ui.kill()
    assert not _port_open(mlflow_port) and not _port_open(prefect_port)
    assert not (tmp_path / ".ui" / "mlflow_uri").exists()


def test_a_port_in_use_stops_make_ui_with_the_port_and_the_variable_to_change(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ui = start_ui(tmp_path, port, free_port())
        _, err = ui.communicate(timeout=60)
    assert ui.returncode == 1
    assert f"port {port} is in use" in err and "MLFLOW_PORT=<port> make ui" in err


def test_the_rendered_deepspeed_examples_are_the_engines_own_configuration():
    script = Path(__file__).resolve().parents[1] / "infra" / "render_deepspeed.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
