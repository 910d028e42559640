"""Static analysis of a model: parameters, multiply-adds, FLOPs and sampling throughput.

Multiply-adds are counted by torch's FlopCounterMode on a meta-device copy of the model
(shapes only, no memory, no weights): every matmul and convolution, nothing else (norms and
elementwise ops are not counted). Attention is whatever runs inside an ``AttentionCore``
module, so both conventions in the literature can be reported: the DiT paper's (attention
included, 118.6 G for DiT-XL/2) and the DICE paper's (attention left out, 114.46 G).
FLOPs are twice the multiply-adds.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dice_core.diffusion import create_diffusion
from dice_core.errors import InputError
from dice_core.models import build_model, get_preset
from dice_core.models.layers import AttentionCore


@dataclass(frozen=True)
class MacCount:
    total: int
    attention: int

    @property
    def without_attention(self) -> int:
        return self.total - self.attention


@dataclass(frozen=True)
class Throughput:
    samples_per_s: float
    device: str
    dtype: str
    batch_size: int
    ddpm_steps: int
    timed_steps: int


@dataclass(frozen=True)
class StaticReport:
    model: str
    family: str
    trainable_params: int
    total_params: int
    macs: int
    attention_macs: int
    macs_without_attention: int
    flops: int
    throughput: Throughput | None

    def as_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def example_inputs(model, batch_size: int, device) -> tuple[torch.Tensor, ...]:
    x = torch.zeros(batch_size, model.in_channels, model.input_size, model.input_size,
                    device=device)
    t = torch.zeros(batch_size, dtype=torch.long, device=device)
    return x, t, torch.zeros_like(t)


def count_macs(model: torch.nn.Module, batch_size: int = 1) -> MacCount:
    """Multiply-adds of one forward pass at ``batch_size`` (run on whatever device the model
    is on; a meta-device model costs nothing). Attention runs through SDPA's math kernel
    here: the flop counter knows no CPU flash kernel, and would count CPU attention as 0."""
    device = next(model.parameters()).device
    attention_names = {name for name, module in model.named_modules()
                       if isinstance(module, AttentionCore)}
    root = type(model).__name__
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), \
            FlopCounterMode(display=False) as counter:
        model(*example_inputs(model, batch_size, device))
    by_module = counter.get_flop_counts()
    attention_flops = sum(sum(by_module.get(f"{root}.{name}", {}).values())
                          for name in attention_names)
    return MacCount(total=counter.get_total_flops() // 2, attention=attention_flops // 2)


def preset_macs(name: str, **overrides) -> MacCount:
    """``count_macs`` of preset ``name`` on the meta device, where every convolution counts as
    a convolution. On a real device the count follows the kernels taken: on the CPU, DICE's
    hands on maps smaller than their kernel are matmuls, and count fewer multiply-adds."""
    with torch.device("meta"):
        return count_macs(build_model(name, **overrides))


@torch.inference_mode()
def sampling_throughput(model: torch.nn.Module, device: str, dtype: torch.dtype,
                        batch_size: int, ddpm_steps: int,
                        timed_steps: int | None = None) -> Throughput:
    """Samples per second of ancestral DDPM sampling with ``ddpm_steps`` respaced steps.

    With ``timed_steps`` < ``ddpm_steps`` only that many steps are timed (after a two-step
    warm-up) and the rate is scaled to ``ddpm_steps``: every step costs the same model call.
    """
    timed = min(timed_steps or ddpm_steps, ddpm_steps)
    if timed < 2:
        raise InputError(f"sampling needs at least 2 DDPM steps to time, got {timed}")
    model = model.to(device=device, dtype=dtype).eval()
    x, _, y = example_inputs(model, batch_size, device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(x.shape, generator=generator).to(device=device, dtype=dtype)
    labels = torch.randint(0, model.num_classes, y.shape, generator=generator).to(device)

    def run(steps: int) -> float:
        diffusion = create_diffusion(str(steps))
        synchronize(device)
        start = time.perf_counter()
        diffusion.p_sample_loop(model, noise.shape, noise=noise, model_kwargs={"y": labels},
                                generator=generator)
        synchronize(device)
        return time.perf_counter() - start

    run(2)
    seconds = run(timed) * ddpm_steps / timed
    return Throughput(samples_per_s=batch_size / seconds, device=device,
                      dtype=str(dtype).removeprefix("torch."), batch_size=batch_size,
                      ddpm_steps=ddpm_steps, timed_steps=timed)


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def analyze(name: str, overrides: dict | None = None, device: str = "cpu",
            dtype: torch.dtype = torch.float32, batch_size: int = 1, ddpm_steps: int = 250,
            timed_steps: int | None = None, measure_throughput: bool = True) -> StaticReport:
    overrides = overrides or {}
    with torch.device("meta"):
        trainable, total = count_parameters(build_model(name, **overrides))
    macs = preset_macs(name, **overrides)
    throughput = None
    if measure_throughput:
        with torch.device(device):
            model = build_model(name, **overrides)
        throughput = sampling_throughput(model, device, dtype, batch_size, ddpm_steps,
                                         timed_steps)
    return StaticReport(model=name, family=get_preset(name).family,
                        trainable_params=trainable, total_params=total, macs=macs.total,
                        attention_macs=macs.attention,
                        macs_without_attention=macs.without_attention, flops=2 * macs.total,
                        throughput=throughput)
