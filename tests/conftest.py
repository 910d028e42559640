import os
import tempfile

import pytest
import torch

from servers import MlflowServer, PrefectServer

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Tests are offline by rule: the hub must not spend its retries on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Stage commands run by the tests record their times here, not in the project's results/.
os.environ.setdefault("DICE_STAGE_TIMES", os.path.join(tempfile.mkdtemp(), "stage_times.jsonl"))


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores, for its own torch and for
    the stages it starts: OpenMP threads that outnumber the cores spin against each other, and
    a 2 s test then took 48 s."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(items):
    """Files with the most slow tests first, so that xdist's workers (one file each at a time,
    in this order: --no-loadscope-reorder) do not end with one of them still on a long file."""
    slow = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def _mlflow_server_process(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture
def mlflow_server(_mlflow_server_process):
    """One real MLflow server for the session (it takes seconds to start), running when a test
    begins even if an earlier test stopped it."""
    return _mlflow_server_process.start()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real Prefect server for the session (about 30 s to start on 2 cores)."""
    with PrefectServer(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """32 coloured shapes of 2 classes at 8x8 in pixel space, 4 shards: training data for
    dit-t that takes seconds."""
    from helpers import tiny_latents
    return tiny_latents(tmp_path_factory.mktemp("tiny-shards"), num_classes=2, per_class=16,
                        image_size=8, resolution=8, shard_size=8)
