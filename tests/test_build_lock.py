"""A build lock of torch's C++ extensions that a killed run left is removed, with a warning,
before an engine starts; one that a live build holds is waited on, saying so."""
import os
import subprocess
import sys
import time

import pytest
import torch

from dice_core.training.build_lock import clear_stale_build_locks

# torch's FileBaton as a build holds it: made by exclusive create, kept open, then removed
BUILD = """
import os, time
fd = os.open("lock", os.O_CREAT | os.O_EXCL)
time.sleep(1.0)
os.close(fd)
os.remove("lock")
"""


def build_folder(root, name="deepspeed_shm_comm"):
    folder = root / name
    folder.mkdir(parents=True)
    return folder


def test_a_lock_no_live_process_holds_is_reported_and_removed(tmp_path, capsys):
    lock = build_folder(tmp_path) / "lock"
    lock.touch()
    # torch's default root has a folder per Python and device above the builds
    default_root_lock = build_folder(tmp_path / "default", "py311_cpu/deepspeed_shm_comm") / \
        "lock"
    default_root_lock.touch()
    clear_stale_build_locks(tmp_path, poll_seconds=0.01)
    assert not lock.exists()
    assert f"warning: removed the stale build lock {lock}: no live process builds" in \
        capsys.readouterr().err
    clear_stale_build_locks(tmp_path / "default", poll_seconds=0.01)
    assert not default_root_lock.exists()


def test_a_lock_a_live_build_holds_is_waited_on_and_left_to_it(tmp_path, capsys):
    folder = build_folder(tmp_path)
    build = subprocess.Popen([sys.executable, "-c", BUILD], cwd=folder)
    while not (folder / "lock").exists() and build.poll() is None:
        time.sleep(0.01)
    clear_stale_build_locks(tmp_path, poll_seconds=0.05)
    assert build.wait(timeout=5) == 0          # it removed its lock itself
    err = capsys.readouterr().err
    assert f"waiting for the build in {folder} to end: its lock {folder / 'lock'} is held by " \
           f"PID {build.pid}" in err
    assert "stale" not in err


def test_a_compiler_working_in_the_folder_keeps_the_lock_until_it_ends(tmp_path, capsys):
    """ninja and the compiler run in the build folder (here `sleep`) after their parent, which
    held the lock, was killed: the lock is theirs while they run, stale once they end."""
    folder = build_folder(tmp_path)
    (folder / "lock").touch()
    compiler = subprocess.Popen(["sleep", "1"], cwd=folder)
    clear_stale_build_locks(tmp_path, poll_seconds=0.05)
    assert compiler.poll() is not None
    err = capsys.readouterr().err
    assert f"held by PID {compiler.pid} (sleep)" in err
    assert err.index("waiting for the build") < err.index("removed the stale build lock")
    assert not (folder / "lock").exists()


def test_an_engine_start_clears_a_stale_build_lock_before_deepspeed_builds(
        tmp_path, monkeypatch, capsys):
    import deepspeed

    from dice_core.training.engine import initialize_engine

    def building(**_):
        raise RuntimeError("DeepSpeed starts")
    lock = build_folder(tmp_path) / "lock"
    lock.touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("RANK", "0")                 # leave this process's environment alone
    monkeypatch.setenv("PATH", os.environ["PATH"])
    monkeypatch.setattr(deepspeed, "initialize", building)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="DeepSpeed starts"):
        initialize_engine(model, torch.optim.SGD(model.parameters(), lr=0.1), {})
    assert not lock.exists() and "removed the stale build lock" in capsys.readouterr().err
