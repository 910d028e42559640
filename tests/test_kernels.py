"""Every kernel of dice_core/models/kernels against the plain form it replaces in dice.py,
forward and gradients, with perturbed weights; and the whole model with and without them."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from dice_core.models import dice, kernels
from helpers import model_inputs
from test_dice import perturbed_dice


def conv(channels, seed, kernel=7, dtype=torch.float32):
    layer = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return layer.to(dtype)


def channels_last_map(batch, channels, size, seed=0):
    x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last).requires_grad_()


def mlp_inputs(pixels_side, channels=8, hidden=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))
    x = torch.randn(3, pixels_side, pixels_side, channels, generator=generator)
    shift, scale, gate = (torch.randn(3, channels, generator=generator) for _ in range(3))
    return mlp, [x.requires_grad_(), shift.requires_grad_(), scale.requires_grad_(),
                 gate.requires_grad_()]


def cases():
    """(reference function, its arguments where its kernel's rule holds, tensors to
    differentiate by)."""
    left, right = conv(6, 1), conv(6, 2)
    lam = nn.Parameter(torch.tensor([0.7]))
    small, large = channels_last_map(2, 6, 4), channels_last_map(2, 6, 9)
    a, b = channels_last_map(2, 6, 5, seed=1), channels_last_map(2, 6, 5, seed=2)
    mlp, mlp_args = mlp_inputs(pixels_side=5)        # 25 pixels > 16 wide
    return {"signal_extraction": (dice.signal_extraction, (a, b, lam), [a, b, lam]),
            "depthwise": (dice.depthwise, (large, left), [large, *left.parameters()]),
            "two_hands": (dice.two_hands, (small, left, right, lam),
                          [small, *left.parameters(), *right.parameters(), lam]),
            "modulated_mlp": (dice.modulated_mlp, (mlp, *mlp_args),
                              [*mlp_args, *mlp.parameters()])}


def test_every_kernel_is_tested():
    assert set(cases()) == set(kernels.KERNELS)


@pytest.mark.parametrize("name", sorted(kernels.KERNELS))
def test_kernel_matches_its_reference_forward_and_gradients(name):
    function, args, inputs = cases()[name]
    assert function.kernel.rule(*args)
    ours = function.kernel.run(*args)
    with kernels.disabled():
        theirs = function.reference(*args)
    assert theirs.abs().max() > 1e-3
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(9))
    ours_grads = torch.autograd.grad((ours * weights).sum(), inputs)
    theirs_grads = torch.autograd.grad((theirs * weights).sum(), inputs)
    for index, (g, expected) in enumerate(zip(ours_grads, theirs_grads)):
        assert expected.abs().max() > 0, index
        assert (g - expected).abs().max() <= 1e-4 * expected.abs().max(), index


@pytest.mark.parametrize("name", sorted(kernels.KERNELS))
def test_disabled_kernels_run_the_reference_exactly(name):
    function, args, _ = cases()[name]
    """Told apart by the last operation of the graph each builds."""
    with kernels.disabled():
        out, reference = function(*args), function.reference(*args)
    assert kernels.enabled()
    assert torch.equal(out, reference)
    assert type(out.grad_fn) is type(reference.grad_fn)
    assert type(function(*args).grad_fn) is not type(reference.grad_fn)


def test_rules_take_each_kernel_only_where_it_pays():
    left = conv(6, 1)
    small, large = channels_last_map(2, 6, 4), channels_last_map(2, 6, 8)
    assert dice.two_hands.kernel.rule(small, left)
    assert not dice.two_hands.kernel.rule(large, left)            # 8x8 is not below 7x7
    with torch.no_grad():                                         # sampling: convolutions
        assert not dice.two_hands.kernel.rule(small, left)
        assert not dice.depthwise.kernel.rule(large, left)
        assert not dice.signal_extraction.kernel.rule(small, small, 1.0)
    with torch.device("meta"):
        assert not dice.depthwise.kernel.rule(torch.empty(1, 6, 8, 8), left)
    mlp, (x, *_) = mlp_inputs(pixels_side=4)                      # 16 pixels, 16 wide
    assert not dice.modulated_mlp.kernel.rule(mlp, x)


@pytest.mark.parametrize("input_size,channels", [(8, 4), (32, 1)])
def test_dice_with_and_without_kernels_agree_forward_and_in_gradients(input_size, channels):
    """8x8 takes the dense hands on its 4x4 and 2x2 maps and broadcasts the MLP's modulation;
    32x32 folds it in the two finer stages."""
    model = perturbed_dice(input_size, channels)
    x, t, y = model_inputs(model, batch_size=3)
    out = model(x, t, y)
    with kernels.disabled():
        reference = model(x, t, y)
    assert out.abs().max() > 1e-3
    assert (out - reference).abs().max() <= 1e-5 * reference.abs().max()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    ours = torch.autograd.grad((out * weights).sum(), list(model.parameters()))
    with kernels.disabled():
        theirs = torch.autograd.grad((model(x, t, y) * weights).sum(),
                                     list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), ours, theirs):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-12, name


def test_the_environment_variable_switches_every_kernel_off():
    code = "from dice_core.models import kernels; print(kernels.enabled())"
    env = {**os.environ, "DICE_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_hand_written_backward_passes_pass_gradcheck():
    from dice_core.models.kernels.dense_hands import _DenseHands
    from dice_core.models.kernels.depthwise import _CpuDepthwise
    from dice_core.models.kernels.extraction import _SignalExtraction
    generator = torch.Generator().manual_seed(6)

    def double(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()
    assert torch.autograd.gradcheck(_SignalExtraction.apply,
                                    (double(2, 3, 4, 4), double(2, 3, 4, 4), double(1)))
    x = double(2, 3, 5, 5).detach().contiguous(memory_format=torch.channels_last)
    for pad in (0, 1):
        assert torch.autograd.gradcheck(_CpuDepthwise.apply, (x.requires_grad_(), double(
            3, 1, 3, 3), double(3), pad))
    for size in (2, 5):       # every pixel within the kernel's reach, and some out of it
        x = double(2, 3, size, size).detach().contiguous(memory_format=torch.channels_last)
        assert torch.autograd.gradcheck(_DenseHands.apply, (
            x.requires_grad_(), double(3, 1, 7, 7), double(3), double(3, 1, 7, 7), double(3),
            3, double(1)))
