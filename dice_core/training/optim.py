"""AdamW that refuses a non-finite gradient: the step is skipped and the weights and moments
stay as they were. fp16 has DeepSpeed's loss scaler for this; bf16 and fp32 have this."""
from __future__ import annotations

import torch


class FiniteAdamW(torch.optim.AdamW):
    last_step_skipped = False

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"]
                 if p.grad is not None]
        finite = bool(torch.stack([g.isfinite().all() for g in grads]).all()) if grads else True
        self.last_step_skipped = not finite
        if finite:
            return super().step(closure)
        return None
