"""RunTracker against a real MLflow server (tests/servers.py), also one that goes away."""
import json
import socket
import time

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image

from dice_core.tracking import RunTracker, flatten_params, open_parent_run
from servers import free_port

TRACKER_LOGGER = "dice_core.tracking.mlflow_tracker"


def history(client, run_id, key="loss"):
    return sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))


def pending(state_dir):
    path = state_dir / "pending.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def messages(caplog, text, state_dir=None):
    """Tracker log lines containing ``text`` (and ``state_dir``, to tell trackers apart)."""
    return [record.getMessage() for record in caplog.records
            if record.name == TRACKER_LOGGER and text in record.getMessage()
            and (state_dir is None or str(state_dir) in record.getMessage())]


def test_flatten_params_dots_nested_keys_and_cuts_long_values():
    flat = flatten_params({"train": {"lr": 1e-4, "ema": {"decay": 0.9999}}, "note": "x" * 7000,
                           "depths": [6, 2, 1]})
    assert flat == {"train.lr": "0.0001", "train.ema.decay": "0.9999", "note": "x" * 6000,
                    "depths": "[6, 2, 1]"}


def test_everything_reaches_the_server(mlflow_server, tmp_path):
    state_dir = tmp_path / "run"
    source = tmp_path / "weights.bin"
    source.write_bytes(b"first")
    pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    tracker = RunTracker(mlflow_server.uri, "reach", state_dir, run_name="dice-t",
                         tags={"model": "dice-t"})
    tracker.log_params({"train": {"lr": 1e-4, "steps": 10}, "model": "dice-t"})
    for step in (0, 5, 10):
        tracker.log_metrics({"loss": 1.0 / (step + 1), "lr": 1e-4}, step=step)
    tracker.set_tags({"stage": "train"})
    tracker.log_artifact(source, "checkpoints")
    source.write_bytes(b"overwritten")  # the tracker sent its own copy
    tracker.log_image(pixels, "samples/grid.png")
    tracker.log_system_metrics(step=10)
    tracker.close()

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "dice-t"
    assert run.data.params == {"train.lr": "0.0001", "train.steps": "10", "model": "dice-t"}
    assert run.data.tags["model"] == "dice-t" and run.data.tags["stage"] == "train"
    assert history(client, tracker.run_id) == [(0, 1.0), (5, 1 / 6), (10, 1 / 11)]
    assert [m.step for m in client.get_metric_history(tracker.run_id, "lr")] == [0, 5, 10]
    assert {"system/cpu_percent", "system/process_rss_gib", "system/memory_used_gib"} <= set(
        run.data.metrics)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    weights = client.download_artifacts(tracker.run_id, "checkpoints/weights.bin", str(downloads))
    assert open(weights, "rb").read() == b"first"
    image = client.download_artifacts(tracker.run_id, "samples/grid.png", str(downloads))
    np.testing.assert_array_equal(np.asarray(Image.open(image)), pixels)
    assert pending(state_dir) == []
    assert list((state_dir / "pending_artifacts").iterdir()) == []


def test_second_tracker_on_the_same_state_dir_continues_the_run(mlflow_server, tmp_path):
    state_dir = tmp_path / "run"
    first = RunTracker(mlflow_server.uri, "resume", state_dir, run_name="dit-t")
    first.log_metrics({"loss": 2.0}, step=0)
    first.close("KILLED")

    second = RunTracker(mlflow_server.uri, "resume", state_dir, run_name="dit-t")
    client = MlflowClient(mlflow_server.uri)
    assert second.run_id == first.run_id
    assert client.get_run(second.run_id).info.status == "RUNNING"
    second.log_metrics({"loss": 1.0}, step=1)
    second.close()

    assert history(client, first.run_id) == [(0, 2.0), (1, 1.0)]
    experiment = client.get_experiment_by_name("resume")
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_child_runs_nest_under_the_parent_run(mlflow_server, tmp_path):
    parent = open_parent_run(mlflow_server.uri, "nesting", tmp_path / "pipeline", "pipeline",
                             tags={"profile": "default"})
    child = RunTracker(mlflow_server.uri, "nesting", tmp_path / "dice", run_name="dice-t",
                       parent_run_id=parent.run_id)
    child.close()
    parent.close()

    client = MlflowClient(mlflow_server.uri)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(parent.run_id).data.tags["profile"] == "default"
    again = open_parent_run(mlflow_server.uri, "nesting", tmp_path / "pipeline", "pipeline")
    assert again.run_id == parent.run_id
    again.close()


def test_a_refused_record_is_dropped_and_blocks_nothing(mlflow_server, tmp_path, caplog):
    state_dir = tmp_path / "run"
    tracker = RunTracker(mlflow_server.uri, "refusals", state_dir, run_name="dimr-t")
    tracker.log_params({"lr": 1e-4})
    tracker.log_params({"lr": 2e-4})  # MLflow params are immutable
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.close()

    assert len(messages(caplog, "refused")) == 1
    assert pending(state_dir) == []
    client = MlflowClient(mlflow_server.uri)
    assert client.get_run(tracker.run_id).data.params == {"lr": "0.0001"}
    assert history(client, tracker.run_id) == [(0, 1.0)]


def test_a_run_the_server_does_not_know_is_replaced_by_a_new_one(mlflow_server, tmp_path, caplog):
    state_dir = tmp_path / "run"
    state_dir.mkdir()
    (state_dir / "run.json").write_text(json.dumps({"run_id": "0" * 32}))
    tracker = RunTracker(mlflow_server.uri, "stale", state_dir, run_name="dice-t")
    tracker.close()

    assert tracker.run_id != "0" * 32
    assert json.loads((state_dir / "run.json").read_text())["run_id"] == tracker.run_id
    assert len(messages(caplog, "starting a new run")) == 1


def test_disabled_tracker_does_nothing(tmp_path):
    state_dir = tmp_path / "rank1"
    tracker = RunTracker(f"http://127.0.0.1:{free_port()}", "off", state_dir, run_name="rank1",
                         enabled=False)
    tracker.log_params({"lr": 1})
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.log_system_metrics(step=0)
    tracker.set_tags({"a": "b"})
    tracker.close()
    assert tracker.run_id is None
    assert not state_dir.exists()


def test_an_unreachable_server_costs_no_time_and_warns_once(tmp_path, caplog):
    state_dir = tmp_path / "run"
    started = time.monotonic()
    tracker = RunTracker(f"http://127.0.0.1:{free_port()}", "nobody", state_dir, run_name="dice-t",
                         retry_seconds=0.05)
    for step in range(20):
        tracker.log_metrics({"loss": 1.0, "lr": 1e-4}, step=step)
        time.sleep(0.01)  # past retry_seconds now and then: retries fail fast too
    tracker.close()

    assert time.monotonic() - started < 10  # MLflow's own retries would take minutes
    assert tracker.run_id is None
    assert len(messages(caplog, "is unreachable")) == 1
    assert [record["step"] for record in pending(state_dir)] == list(range(20))


def test_a_server_that_never_answers_costs_one_timeout(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with socket.socket() as silent:  # accepts connections (the kernel does) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        started = time.monotonic()
        tracker = RunTracker(f"http://127.0.0.1:{silent.getsockname()[1]}", "silent",
                             tmp_path / "run", run_name="dice-t", retry_seconds=60)
        for step in range(10):
            tracker.log_metrics({"loss": 1.0}, step=step)
        assert time.monotonic() - started < 5
    assert len(messages(caplog, "is unreachable")) == 1


def test_an_outage_mid_run_loses_nothing(mlflow_server, tmp_path, caplog):
    state_dir = tmp_path / "run"
    tracker = RunTracker(mlflow_server.uri, "outage", state_dir, run_name="dice-t",
                         retry_seconds=1)
    for step in range(3):
        tracker.log_metrics({"loss": float(step)}, step=step)
    assert pending(state_dir) == []

    mlflow_server.stop()
    for step in range(3, 10):
        started = time.monotonic()
        tracker.log_metrics({"loss": float(step)}, step=step)
        assert time.monotonic() - started < 2
    assert [record["step"] for record in pending(state_dir)] == list(range(3, 10))
    assert len(messages(caplog, "is unreachable", state_dir)) == 1

    mlflow_server.start()
    time.sleep(1.1)  # past retry_seconds, whatever the restart took
    tracker.log_metrics({"loss": 10.0}, step=10)
    assert len(messages(caplog, "reachable again")) == 1
    assert pending(state_dir) == []
    tracker.close()

    client = MlflowClient(mlflow_server.uri)
    assert history(client, tracker.run_id) == [(step, float(step)) for step in range(11)]
    assert len(messages(caplog, "is unreachable", state_dir)) == 1


def test_trackers_made_or_closed_while_the_server_is_down(mlflow_server, tmp_path, caplog):
    closing_dir, late_dir = tmp_path / "closing", tmp_path / "late"
    closing = RunTracker(mlflow_server.uri, "down", closing_dir, run_name="dit-t")
    closing.log_metrics({"loss": 0.0}, step=0)

    mlflow_server.stop()
    closing.log_metrics({"loss": 1.0}, step=1)
    closing.close()
    assert len(messages(caplog, "was not ended", closing_dir)) == 1
    assert [record["step"] for record in pending(closing_dir)] == [1]

    started = time.monotonic()
    late = RunTracker(mlflow_server.uri, "down", late_dir, run_name="dice-t", retry_seconds=1)
    late.log_params({"lr": 1e-4})
    late.log_metrics({"loss": 0.0}, step=0)
    assert time.monotonic() - started < 5
    assert late.run_id is None

    mlflow_server.start()
    time.sleep(1.1)
    late.log_metrics({"loss": 1.0}, step=1)
    assert late.run_id is not None
    late.close()
    reopened = RunTracker(mlflow_server.uri, "down", closing_dir, run_name="dit-t")
    assert pending(closing_dir) == []
    reopened.close()

    client = MlflowClient(mlflow_server.uri)
    assert reopened.run_id == closing.run_id
    assert history(client, closing.run_id) == [(0, 0.0), (1, 1.0)]
    assert client.get_run(closing.run_id).info.status == "FINISHED"
    assert history(client, late.run_id) == [(0, 0.0), (1, 1.0)]
    assert client.get_run(late.run_id).data.params == {"lr": "0.0001"}


def test_dice_tracking_flush_sends_what_a_run_journalled_while_the_server_was_down(
        mlflow_server, tmp_path, capsys):
    from pathlib import Path

    import yaml

    from pipelines.cli import main as dice_main
    from pipelines.tracking_delivery import deliver_pending
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["train"]["output"] = "runs"
    params["tracking"].update(uri=mlflow_server.uri, experiment=tmp_path.name)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    state_dir = tmp_path / "runs" / "dit-t" / "tracking"
    mlflow_server.stop()
    tracker = RunTracker(mlflow_server.uri, tmp_path.name, state_dir, run_name="dit-t",
                         retry_seconds=3600)
    tracker.log_metrics({"loss": 0.5}, step=1)
    tracker.log_metrics({"loss": 0.25}, step=2)
    tracker.close()
    (state_dir.parent / "summary.json").write_text(json.dumps({"status": "FINISHED"}))
    assert len(pending(state_dir)) == 2
    parent_dir = tmp_path / "runs" / "pipeline" / "tracking"   # its parent, down all along too
    parent = RunTracker(mlflow_server.uri, tmp_path.name, parent_dir, run_name="pipeline",
                        retry_seconds=3600)
    parent.log_metrics({"total/kwh": 0.1}, step=0)
    parent.close()

    assert deliver_pending(tmp_path) == 0           # still down: kept for the next delivery
    mlflow_server.start()
    assert dice_main(["tracking", "flush", "--project", str(tmp_path)]) == 0
    assert "tracking flush: 3 journalled MLflow records sent" in capsys.readouterr().out
    assert pending(state_dir) == []
    client = MlflowClient(mlflow_server.uri)
    run_id = json.loads((state_dir / "run.json").read_text())["run_id"]
    assert history(client, run_id) == [(1, 0.5), (2, 0.25)]
    assert client.get_run(run_id).info.status == "FINISHED"
    parent_id = json.loads((parent_dir / "run.json").read_text())["run_id"]
    assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent_id


def test_a_step_the_journal_took_is_not_logged_again_after_a_kill(tmp_path):
    """once_per_step: a kill between the journal's line and logged_steps.json must not let a
    resumed run log that step again; a rollback (forget_steps_after) lets later steps log."""
    from dice_core.tracking.journal import Journal
    state_dir, uri = tmp_path / "run", f"http://127.0.0.1:{free_port()}"   # a server down

    def tracker():
        return RunTracker(uri, "kills", state_dir, run_name="dit-t", once_per_step=True)
    first = tracker()
    first.log_metrics({"loss": 1.0}, step=1)
    # killed right after the journal took step 2, before logged_steps.json did
    Journal(state_dir).append({"kind": "metrics", "step": 2, "timestamp": 0,
                               "values": {"loss": 0.9}})
    resumed = tracker()
    resumed.log_metrics({"loss": 0.9}, step=2)          # the replayed step
    resumed.log_metrics({"loss": 0.8}, step=3)
    assert [(r["step"], r["values"]) for r in pending(state_dir)] == \
        [(1, {"loss": 1.0}), (2, {"loss": 0.9}), (3, {"loss": 0.8})]
    resumed.forget_steps_after(1)                      # rolled back to a checkpoint of step 1
    rolled_back = tracker()
    rolled_back.log_metrics({"loss": 0.7}, step=2)     # trained again: logged again
    assert [r["step"] for r in pending(state_dir) if r["kind"] == "metrics"] == [1, 2, 3, 2]


def test_a_flush_after_dvc_repro_leaves_dvc_up_to_date(mlflow_server, tmp_path):
    """As `make repro` runs it: `dvc repro` with MLflow records journalled inside a stage's
    output (and inside what a later stage depends on), then `dice tracking flush`."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from pipelines.tracking_delivery import deliver_pending
    project = Path(__file__).resolve().parents[1]
    shutil.copy(project / ".dvcignore", tmp_path)   # what tells DVC what to leave out
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["output"] = "runs"
    params["tracking"].update(uri=mlflow_server.uri, experiment=tmp_path.name)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    down = f"http://127.0.0.1:{free_port()}"
    for name in ("dit-t", "pipeline"):      # a model's run and the pipeline's, MLflow down
        tracker = RunTracker(down, tmp_path.name, tmp_path / "runs" / name / "tracking",
                             run_name=name, once_per_step=True)
        tracker.log_metrics({"loss": 0.5}, step=1)
        tracker.log_artifact(tmp_path / "params.yaml", "config")
        tracker.close()
    # the run folder persists: the stage finishes the run the journal belongs to
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"cmd": "echo '{\"status\": \"FINISHED\"}' > runs/dit-t/summary.json",
                  "outs": [{"runs/dit-t": {"persist": True}}]},
        "report": {"cmd": "echo reported > report.txt", "deps": ["runs"],
                   "outs": ["report.txt"]}}}))
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    for command in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "repro", "-q"]):
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)

    assert deliver_pending(tmp_path) == 4
    assert pending(tmp_path / "runs" / "dit-t" / "tracking") == []
    status = subprocess.run([*dvc, "status", "--json"], cwd=tmp_path, check=True,
                            capture_output=True, text=True)
    assert json.loads(status.stdout or "{}") == {}
