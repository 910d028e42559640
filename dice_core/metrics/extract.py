"""Run a feature network over a sample set."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .feature_set import FeatureSet
from .samples import check_samples


@torch.no_grad()
def extract_features(network: nn.Module, images: np.ndarray, batch_size: int = 64) -> FeatureSet:
    """Features of ``images`` (checked by ``check_samples``) on the network's device, float32."""
    check_samples(images)
    device = next(network.parameters()).device
    outputs = [network(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
                       .to(device))
               for start in range(0, len(images), batch_size)]
    return FeatureSet(**{field: torch.cat([getattr(out, field) for out in outputs]).cpu().numpy()
                         for field in ("pool", "logits", "spatial")})
