"""The Prefect flow as users run it, against a real Prefect server and a real MLflow server:
every stage of dvc.yaml as a task through DVC, the artifacts, the MLflow parent run and its
children, a second run that trains nothing, per-model DVC dependencies, the scheduled
deployment, and the failures a user meets."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from dice_core.training.engine import child_process_env
from helpers import scratch_project, with_runs
from pipelines.settings import update_params

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODELS = ["dit-t", "dice-t"]


def environment(prefect_api: str | None) -> dict:
    env = child_process_env()   # not the rank and port of an engine in this test process
    env.setdefault("TORCH_EXTENSIONS_DIR", str(PROJECT / ".cache" / "torch_extensions"))
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.pop("PREFECT_API_URL", None)
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    return env


def run(command, cwd, prefect_api=None, check=True, timeout=600):
    return subprocess.run(command, cwd=cwd, check=check, capture_output=True, text=True,
                          env=environment(prefect_api), timeout=timeout)


def flow_project(folder: Path, mlflow_uri: str) -> dict:
    """Two tiny models, 2 steps each, evaluated at steps 1 and 2, in a git + DVC repository."""
    params = scratch_project(folder, resolution=8)
    params["static"].update(models=["dit-t"], timed_steps=2, ddpm_steps=2,
                            model_overrides={"input_size": 8, "in_channels": 4,
                                             "num_classes": 2})
    params["train"].update(models=MODELS, steps=2, global_batch=4, log_every=1, ckpt_every=2,
                           eval_every=1, loader_workers=0, device="cpu",
                           per_model={model: {} for model in MODELS})
    with_runs(params)
    params["report"].update(bootstrap=10, timed_steps=2, ddpm_steps=2)
    params["tracking"].update(uri=mlflow_uri, experiment=folder.name, log_images=False,
                              retry_seconds=0.1)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], folder)
    run([str(BIN / "dvc"), "init", "-q"], folder)
    return params


def api(prefect_api: str, path: str, body: dict | None = None) -> list[dict]:
    response = httpx.post(f"{prefect_api}/{path}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def flow_result(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def dvc_status(folder: Path) -> dict:
    return json.loads(run([str(BIN / "dvc"), "status", "--json"], folder).stdout or "{}")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_flow_runs_every_stage_through_dvc_and_a_second_run_trains_nothing(
        tmp_path, prefect_server, mlflow_server):
    flow_project(tmp_path, mlflow_server.uri)
    first = run([sys.executable, "-m", "pipelines.flow"], tmp_path, prefect_server.api_url)
    stages = [s["stage"] for s in flow_result(first.stdout)["stages"]]
    expected = ["static", "prepare", "autoencoder", "encode", "reference", "classifier",
                "report", *(f"{stage}@{m}" for stage in ("train", "evaluate") for m in MODELS)]
    assert sorted(stages) == sorted(expected)
    order = [stages.index(stage) for stage in ("prepare", "autoencoder", "encode",
                                               "train@dice-t", "evaluate@dice-t", "report")]
    assert order == sorted(order)       # each stage after what it depends on

    [flow_run] = api(prefect_server.api_url, "flow_runs/filter")
    assert flow_run["state_type"] == "COMPLETED"
    tasks = api(prefect_server.api_url, "task_runs/filter",
                {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    assert {t["name"] for t in tasks} >= set(stages)
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    keys = {a["key"] for a in api(prefect_server.api_url, "artifacts/filter")}
    assert {"table-1", "table-2", "report", *(f"mlflow-{m}" for m in MODELS)} <= keys

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name(tmp_path.name).experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    children = {r.info.run_name: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(MODELS)
    for child in children.values():
        history = client.get_metric_history(child.info.run_id, "eval/fd_effnet")
        assert sorted(m.step for m in history) == [1, 2]

    second = flow_result(run([sys.executable, "-m", "pipelines.flow"], tmp_path,
                             prefect_server.api_url).stdout)
    assert second["ran"] == []

    update_params(tmp_path / "params.yaml", overrides=["train.log_every=2"])
    assert dvc_status(tmp_path) == {}
    update_params(tmp_path / "params.yaml", overrides=["train.per_model.dice-t.lr=0.01"])
    assert set(dvc_status(tmp_path)) == {"train@dice-t", "report"}
    # A new lr is a new run (resuming the old one is refused): start it afresh, with the
    # tracking server down, which must not stop the flow.
    shutil.rmtree(tmp_path / "runs" / "dice-t")
    mlflow_server.stop()
    third = flow_result(run([sys.executable, "-m", "pipelines.flow"], tmp_path,
                            prefect_server.api_url).stdout)
    assert sorted(third["ran"]) == ["evaluate@dice-t", "report", "train@dice-t"]
    journal = tmp_path / "runs" / "dice-t" / "tracking" / "pending.jsonl"
    assert journal.read_text().strip() and third["delivered_records"] == 0
    mlflow_server.start()
    flushed = run([sys.executable, "-m", "pipelines.tracking_delivery", "flush"], tmp_path)
    assert "journalled MLflow records sent" in flushed.stdout and not journal.read_text().strip()
    rerun = json.loads((tmp_path / "runs" / "dice-t" / "tracking" / "run.json").read_text())
    child = client.get_run(rerun["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.params["train.lr"] == "0.01"
    history = client.get_metric_history(child.info.run_id, "eval/fd_effnet")
    assert sorted(m.step for m in history) == [1, 2]


@pytest.mark.slow
def test_serving_the_deployment_registers_its_cron_schedule(tmp_path, prefect_server):
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    server = subprocess.Popen([sys.executable, "-m", "pipelines.flow", "serve", "--cron",
                               "30 3 * * *"], cwd=tmp_path, env=environment(
                                   prefect_server.api_url), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        found = []
        while not found and time.monotonic() < deadline:
            found = [d for d in api(prefect_server.api_url, "deployments/filter")
                     if d["name"] == "dice-nightly"]
            time.sleep(1)
        [deployment] = found
        crons = [s["schedule"].get("cron") for s in deployment["schedules"]]
        assert crons == ["30 3 * * *"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serving_without_a_prefect_server_stops_with_what_to_do(tmp_path):
    from servers import free_port
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    down = f"http://127.0.0.1:{free_port()}/api"
    result = run([sys.executable, "-m", "pipelines.flow", "serve"], tmp_path, down, check=False,
                 timeout=120)
    assert result.returncode == 2
    assert f"the Prefect server at {down} does not answer" in result.stderr
    assert "make ui" in result.stderr


def test_a_wrong_override_or_profile_stops_the_flow_before_any_stage(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((PROJECT / "params.yaml").read_text())
    before = params.read_text()
    result = run([sys.executable, "-m", "pipelines.flow", "-S", "train.stepz=3"], tmp_path,
                 check=False, timeout=120)
    assert result.returncode == 2 and "train.stepz: Extra inputs are not permitted" in \
        result.stderr
    result = run([sys.executable, "-m", "pipelines.flow", "--profile", "nonesuch"], tmp_path,
                 check=False, timeout=120)
    assert result.returncode == 2 and "no profile 'nonesuch'" in result.stderr
    assert params.read_text() == before


def test_dice_profile_imagenet_writes_params_that_dvc_runs_as_the_whole_graph(tmp_path):
    from helpers import copy_project
    copy_project(tmp_path)
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    run(["git", "init", "-q"], tmp_path)
    run([str(BIN / "dvc"), "init", "-q"], tmp_path)
    written = run([sys.executable, "-m", "pipelines.cli", "profile", "imagenet"], tmp_path)
    assert "profile imagenet written" in written.stdout
    # --force: in a repository where nothing ran yet, a plain --dry stops at the first
    # stage whose input another stage has not made
    dry = run([str(BIN / "dvc"), "repro", "--dry", "--force"], tmp_path).stdout
    stages = ["static", "prepare", "autoencoder", "encode", "reference", "classifier", "report",
              *(f"{stage}@{model}" for stage in ("train", "evaluate")
                for model in ("dice-xl", "dit-xl-2", "dimr-xl-2r"))]
    assert all(f"Running stage '{stage}'" in dry for stage in stages), dry


def test_a_dvc_lock_held_for_a_process_that_is_not_dvc_is_named_with_the_files_to_remove(
        tmp_path):
    import logging

    from pipelines.dvc_stages import StageFailed, reproduce
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  hello:\n    cmd: echo hi > out.txt\n    outs:\n      - out.txt\n")
    run(["git", "init", "-q"], tmp_path)
    run([str(BIN / "dvc"), "init", "-q"], tmp_path)
    rwlock = tmp_path / ".dvc" / "tmp" / "rwlock"
    # what a killed run leaves when its PID has since gone to another process (this one)
    rwlock.write_text(json.dumps({"read": {}, "write": {
        str(tmp_path / "out.txt"): {"pid": os.getpid(), "cmd": "dvc repro (killed)"}}}))
    with pytest.raises(StageFailed, match=r"(?s)a killed run left it: remove .*rwlock"):
        reproduce("hello", tmp_path, logging.getLogger("test"))
    rwlock.unlink()
    assert reproduce("hello", tmp_path, logging.getLogger("test"))["ran"]
    assert (tmp_path / "out.txt").read_text().strip() == "hi"


def test_the_retry_decision_follows_what_the_stage_said(tmp_path, monkeypatch):
    """A command that stops with an error to fix writes it where the flow asked; the flow does
    not retry that, and retries anything else (killed, out of memory, a lost worker)."""
    from prefect.states import Failed

    from pipelines.cli import main
    from pipelines.dvc_stages import stage_failure
    from pipelines.flow import retry_helps
    from pipelines.stage_outcome import OUTCOME_VARIABLE
    outcome = tmp_path / "outcome.json"
    monkeypatch.setenv(OUTCOME_VARIABLE, str(outcome))
    assert main(["profile", "imagenet", "--params", str(tmp_path / "missing.yaml")]) == 2
    said = json.loads(outcome.read_text())
    assert said["exit_status"] == 2 and "missing.yaml not found" in said["message"]
    refused = stage_failure("prepare", tmp_path, "dvc's last lines", said)
    assert "prepare: " + said["message"] in str(refused) and "not retried" in str(refused)
    assert not retry_helps(None, None, Failed(data=refused))
    killed = stage_failure("prepare", tmp_path, "exited with -9", None)
    assert "exited with -9" in str(killed) and retry_helps(None, None, Failed(data=killed))


# Two of the flow's stage tasks, each retried once after a crash, in a flow run of its own
TWO_STAGES = """
import json
from prefect import flow
from pipelines.dvc_stages import StageFailed, StageRefused
from pipelines.flow import stage_task

@flow
def two_stages() -> dict:
    failures = {}
    for stage in ("prepare", "encode"):
        try:
            stage_task(stage)(stage, ".")
        except StageFailed as error:
            failures[stage] = {"refused": isinstance(error, StageRefused), "error": str(error)}
    return failures

print(json.dumps(two_stages()))
"""


@pytest.mark.slow
def test_a_stage_that_stops_with_an_error_to_fix_runs_once_and_a_killed_one_twice(
        tmp_path, prefect_server):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        # the `dice` command refusing (exit status 2), and a stage killed as by the OOM killer
        "prepare": {"cmd": "echo run >> prepare.runs && python -m pipelines.cli profile "
                           "imagenet --params missing.yaml"},
        "encode": {"cmd": "echo run >> encode.runs && kill -9 $$"}}}))
    run(["git", "init", "-q"], tmp_path)
    run([str(BIN / "dvc"), "init", "-q"], tmp_path)
    failures = flow_result(run([sys.executable, "-c", TWO_STAGES], tmp_path,
                               prefect_server.api_url).stdout)
    assert (tmp_path / "prepare.runs").read_text().split() == ["run"]
    assert failures["prepare"]["refused"]
    assert "prepare: missing.yaml not found" in failures["prepare"]["error"]
    assert (tmp_path / "encode.runs").read_text().split() == ["run", "run"]
    assert not failures["encode"]["refused"]
