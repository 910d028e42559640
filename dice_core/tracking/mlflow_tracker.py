"""RunTracker: the one way training talks to MLflow, made so that MLflow never stops training."""
from __future__ import annotations

import os

# MLflow reads these on every request. Its defaults (7 retries with exponential back-off, 120 s
# timeouts) hold a training step for minutes when the server is down; the tracker retries itself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
# Read when mlflow is first imported, hence before the imports below.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import functools  # noqa: E402
import logging  # noqa: E402
import posixpath  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import requests  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.tracking.multimedia import convert_to_pil_image  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402
from mlflow.utils.validation import (  # noqa: E402
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from dice_core.durable import read_json, write_json_atomic  # noqa: E402
from dice_core.faults import fault_point  # noqa: E402

from .journal import Journal  # noqa: E402
from .system_metrics import SystemSampler  # noqa: E402

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOGGED_STEPS_FILE = "logged_steps.json"
FORGET_STEPS = "forget_steps"   # a journal record: steps after "after" may be logged again
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
# What a failed send can raise when the server is down, slow or failing.
SEND_ERRORS = (MlflowException, requests.exceptions.RequestException, OSError)


def flatten_params(params: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; values as strings cut to MLflow's length limit."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_VAL_LENGTH]
    return flat


def _tag_values(tags: Mapping) -> dict[str, str]:
    return {str(key): str(value)[:MAX_TAG_VAL_LENGTH] for key, value in tags.items()}


def _is_refusal(error: Exception) -> bool:
    """The server (or the client's own checks) refused the content: sending it again is futile.
    Unreachable servers, timeouts and 5xx answers come out as status 500 or above."""
    if not isinstance(error, MlflowException):
        return False
    status = error.get_http_status_code()
    return 400 <= status < 500 and status != 429


def _short(error: Exception) -> str:
    """The error in one line; a long one keeps its start (what failed) and end (why)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else f"{text[:120]} ... {text[-150:]}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _metric_group_end(records: list[dict], start: int) -> int:
    """End of the records to send together from ``start``: consecutive metric records that fit
    one batch, or the single record at ``start``."""
    end = start + 1
    if records[start]["kind"] != "metrics":
        return end
    size = len(records[start]["values"])
    while (end < len(records) and records[end]["kind"] == "metrics"
           and size + len(records[end]["values"]) <= MAX_METRICS_PER_BATCH):
        size += len(records[end]["values"])
        end += 1
    return end


def _copy(source: Path, destination: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, destination)
    else:
        shutil.copy2(source, destination)


def _only_when_enabled(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.enabled:
            return method(self, *args, **kwargs)
        return None
    return wrapper


class RunTracker:
    """One MLflow run, fed from one process; it never blocks or breaks training.

    Every call is first written to the journal ``state_dir/pending.jsonl`` (files are copied to
    ``state_dir/pending_artifacts/``), then sent. When MLflow cannot be reached the tracker warns
    once, keeps the records and tries again at most every ``retry_seconds``; they reach the server
    in order, metrics with their original step and timestamp. The run is created on the first
    successful contact and its id kept in ``state_dir/run.json``: a tracker made again on the same
    ``state_dir`` continues that run, and sends what an earlier one could not.

    ``tracking_uri`` None is MLflow's default (``MLFLOW_TRACKING_URI``, else, in MLflow 3,
    ``sqlite:///mlflow.db`` in the working directory); ``enabled=False`` (every rank but 0) makes
    every method a no-op. ``tags`` (and ``parent_run_id``, which nests this run under another in
    the MLflow UI) are set when the run is created. One tracker per ``state_dir`` at a time.

    ``once_per_step`` (training runs): a metric is logged at most once per step over every
    tracker on the state_dir (``logged_steps.json`` keeps each key's last step), so a run resumed
    from a checkpoint does not log the steps it replays a second time.
    """

    def __init__(self, tracking_uri: str | None, experiment: str, state_dir: str | os.PathLike,
                 *, run_name: str, parent_run_id: str | None = None, tags: Mapping | None = None,
                 enabled: bool = True, retry_seconds: float = 30.0,
                 once_per_step: bool = False):
        self.enabled = enabled
        self.state_dir = Path(state_dir)
        self._run_id = None
        if not enabled:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(tracking_uri)
        self._experiment = experiment
        self._run_name = run_name
        self._creation_tags = _tag_values(tags or {})
        if parent_run_id is not None:
            self._creation_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        self._retry_seconds = retry_seconds
        self._journal = Journal(self.state_dir)
        self._run_file = self.state_dir / RUN_FILE
        self._run_id = (read_json(self._run_file) or {}).get("run_id")
        self._run_open = False
        self._offline = False
        self._next_attempt = 0.0
        self._system = SystemSampler()
        self._steps_file = self.state_dir / LOGGED_STEPS_FILE if once_per_step else None
        self._logged_steps = {}
        if once_per_step:   # the file, and what the journal took since (a kill may fall between)
            self._logged_steps = read_json(self._steps_file) or {}
            for record in self._journal.records:
                self._apply_to_logged_steps(record)
        self._flush()

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; None until the server has been reached once."""
        return self._run_id

    @property
    def tracking_uri(self) -> str | None:
        return self._client.tracking_uri if self.enabled else None

    @_only_when_enabled
    def log_params(self, params: Mapping) -> None:
        self._record({"kind": "params", "values": flatten_params(params)})

    @_only_when_enabled
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        values = {str(key): float(value) for key, value in metrics.items()}
        if self._steps_file is not None:
            values = {k: v for k, v in values.items() if step > self._logged_steps.get(k, -1)}
            if not values:
                return
        self._record({"kind": "metrics", "step": int(step), "timestamp": int(time.time() * 1000),
                      "values": values})

    @_only_when_enabled
    def forget_steps_after(self, step: int) -> None:
        """With ``once_per_step``: the steps after ``step`` may be logged again (a run rolled
        back to a checkpoint at ``step`` trains them anew, with other settings)."""
        if self._steps_file is not None:
            self._record({"kind": FORGET_STEPS, "after": int(step)})

    @_only_when_enabled
    def log_system_metrics(self, step: int) -> None:
        """CPU use, memory of the process and the machine, and GPU memory where there is a GPU."""
        self.log_metrics(self._system.sample(), step)

    @_only_when_enabled
    def set_tags(self, tags: Mapping) -> None:
        self._record({"kind": "tags", "values": _tag_values(tags)})

    @_only_when_enabled
    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or a folder (as MlflowClient.log_artifact does); it is copied at once."""
        source = Path(local_path)
        if not source.exists():
            raise FileNotFoundError(f"no artifact at {source}")
        self._record_file(source.name, functools.partial(_copy, source), artifact_path)

    @_only_when_enabled
    def log_image(self, image, artifact_file: str) -> None:
        """A numpy array (as MLflow converts it) or a PIL image, saved as ``artifact_file``."""
        if isinstance(image, np.ndarray):
            image = convert_to_pil_image(image)
        directory, name = posixpath.split(artifact_file)
        self._record_file(name, image.save, directory or None)

    @_only_when_enabled
    def close(self, status: str = "FINISHED") -> None:
        """One attempt to send what is pending, then end the run with ``status``. What cannot be
        sent stays in the journal for the next tracker on the same ``state_dir``."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, not {status!r}")
        if self._flush():
            try:
                self._client.set_terminated(self._run_id, status=status)
                return
            except SEND_ERRORS as error:
                self._go_offline(error)
        logger.warning(
            "MLflow run %s at %s was not ended (%s): %s keeps %s for the next tracker on the same "
            "state_dir to send", self._run_id or "(not created yet)", self.tracking_uri, status,
            self._journal.path, self._pending_summary())

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")

    def _record_file(self, name: str, write, artifact_path: str | None) -> None:
        key = self._journal.store_file(name, write)
        self._record({"kind": "artifact", "local": key, "artifact_path": artifact_path})

    def _record(self, record: dict) -> None:
        self._journal.append(record)
        self._note_logged(record)
        if not self._offline or time.monotonic() >= self._next_attempt:
            self._flush()

    def _note_logged(self, record: dict) -> None:
        """With ``once_per_step``, a metric's step as soon as the journal holds it, before the
        send: a kill while sending then leaves nothing to log again. A kill between the two
        local writes is made good by the next tracker, which replays the journal's records
        over logged_steps.json; a record is never lost."""
        if self._steps_file is not None and record["kind"] in ("metrics", FORGET_STEPS):
            self._apply_to_logged_steps(record)
            write_json_atomic(self._steps_file, self._logged_steps)

    def _apply_to_logged_steps(self, record: dict) -> None:
        if record["kind"] == "metrics":
            self._logged_steps.update(dict.fromkeys(record["values"], record["step"]))
        elif record["kind"] == FORGET_STEPS:
            self._logged_steps = {key: min(last, record["after"])
                                  for key, last in self._logged_steps.items()}

    def _flush(self) -> bool:
        """Send the journal; False, in offline mode, when MLflow cannot take it now."""
        try:
            self._open_run()
            sent = self._send_pending()
        except SEND_ERRORS as error:
            self._go_offline(error)
            return False
        if self._offline:
            self._offline = False
            logger.warning("MLflow at %s is reachable again: sent %s to run %s",
                           self.tracking_uri, _count(sent, "pending record"), self._run_id)
        return True

    def _go_offline(self, error: Exception) -> None:
        self._next_attempt = time.monotonic() + self._retry_seconds
        if self._offline:
            return
        self._offline = True
        logger.warning(
            "MLflow at %s is unreachable (%s): training goes on; %s keeps %s, to be sent when it "
            "is back (next try in %g s)", self.tracking_uri, _short(error), self._journal.path,
            self._pending_summary(), self._retry_seconds)

    def _pending_summary(self) -> str:
        records = self._journal.records
        metrics = sum(len(record["values"]) for record in records if record["kind"] == "metrics")
        return f"{_count(metrics, 'metric')} ({_count(len(records), 'record')})"

    def _open_run(self) -> None:
        """Create the run, or set the one in run.json RUNNING again, once per tracker."""
        if self._run_open:
            return
        if self._run_id is not None:
            try:
                self._client.update_run(self._run_id, status="RUNNING")
            except MlflowException as error:
                if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                logger.warning("MLflow at %s has no run %s (named in %s): starting a new run",
                               self.tracking_uri, self._run_id, self._run_file)
                self._run_id = None
        if self._run_id is None:
            run = self._client.create_run(self._experiment_id(), run_name=self._run_name,
                                          tags=self._creation_tags)
            self._run_id = run.info.run_id
            write_json_atomic(self._run_file, {"run_id": self._run_id,
                                               "experiment": self._experiment,
                                               "tracking_uri": self.tracking_uri})
        self._run_open = True

    def _experiment_id(self) -> str:
        experiment = self._client.get_experiment_by_name(self._experiment)
        if experiment is None:
            try:
                return self._client.create_experiment(self._experiment)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":  # made meanwhile by another run
                    raise
                experiment = self._client.get_experiment_by_name(self._experiment)
        if experiment.lifecycle_stage == "deleted":
            self._client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _send_pending(self) -> int:
        """Send the journal's records in order and drop those sent (or refused for good);
        raises on the first failure that a later try may not have."""
        records = self._journal.records
        refusals = []
        done = 0
        try:
            while done < len(records):
                end = _metric_group_end(records, done)
                refusals += self._send_group(records[done:end])
                done = end
        finally:
            self._journal.drop_first(done)
            if refusals:
                logger.warning("MLflow at %s refused %s, dropped for good; the first reason: %s",
                               self.tracking_uri, _count(len(refusals), "record"),
                               _short(refusals[0]))
        return done

    def _send_group(self, group: list[dict]) -> list[Exception]:
        """Send ``group``; returns the refusals. A refused group is sent again record by record so
        that one bad metric name does not cost the batch it came in."""
        try:
            self._send(group)
            return []
        except MlflowException as error:
            if not _is_refusal(error):
                raise
            if len(group) == 1:
                return [error]
        return [refusal for record in group for refusal in self._send_group([record])]

    def _send(self, group: list[dict]) -> None:
        kind = group[0]["kind"]
        if kind == "metrics":
            metrics = [Metric(key, value, record["timestamp"], record["step"])
                       for record in group for key, value in record["values"].items()]
            for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
                self._client.log_batch(self._run_id, metrics=chunk, synchronous=True)
                fault_point("mlflow_send")   # taken by the server, still in the journal
        elif kind == "params":
            params = [Param(key, value) for key, value in group[0]["values"].items()]
            for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
                self._client.log_batch(self._run_id, params=chunk, synchronous=True)
        elif kind == "tags":
            tags = [RunTag(key, value) for key, value in group[0]["values"].items()]
            for chunk in _chunks(tags, MAX_PARAMS_TAGS_PER_BATCH):
                self._client.log_batch(self._run_id, tags=chunk, synchronous=True)
        elif kind == FORGET_STEPS:
            return      # a note for once_per_step, nothing to send
        else:  # an artifact
            local_path = self._journal.local_path(group[0]["local"])
            self._client.log_artifact(self._run_id, str(local_path), group[0]["artifact_path"])


def open_parent_run(tracking_uri: str | None, experiment: str, state_dir: str | os.PathLike,
                    run_name: str, tags: Mapping | None = None, **options) -> RunTracker:
    """The pipeline-level run: pass its ``run_id`` as ``parent_run_id`` to each model's
    RunTracker and the MLflow UI nests their runs under it. Resumable through its own
    ``state_dir``; ``options`` are RunTracker's (``enabled``, ``retry_seconds``)."""
    return RunTracker(tracking_uri, experiment, state_dir, run_name=run_name, tags=tags, **options)
