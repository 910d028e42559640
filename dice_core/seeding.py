"""Generators seeded by a tuple of integers (seed, purpose, step, rank, ...).

Everything random that a comparison must share between models (data order, latent noise,
timesteps, diffusion noise, dropped labels) is drawn from such a generator, never from global
RNG state, so it depends on the step alone and not on what ran before.
"""
from __future__ import annotations

import numpy as np
import torch

# Purposes: one stream each, so that adding a draw to one never shifts another.
(SHARD_ORDER, SAMPLE_ORDER, LATENT_NOISE, DIFFUSION_INPUTS, EVAL_SAMPLES,
 AUTOENCODER) = 1, 2, 3, 4, 5, 6


def seeded_generator(*keys: int) -> torch.Generator:
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))
