import os

import pytest
import torch

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Tests are offline by rule: the hub must not spend its retries on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
