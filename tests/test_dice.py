"""DICE-specific behaviour: the 'hands' function and the cascade."""
import pytest
import torch

from dice_core.models import build_model, signal_extraction
from helpers import model_inputs, train_then_gradients


def test_signal_extraction_is_the_papers_formula_in_float64():
    generator = torch.Generator().manual_seed(1)
    left = torch.randn(4096, dtype=torch.float64, generator=generator) * 5
    right = torch.randn(4096, dtype=torch.float64, generator=generator) * 5
    for lam in (0.0, 0.3, 1.0, 4.0):
        expected = (left + right) / (1 + torch.exp((left - right) ** 2 * lam))
        torch.testing.assert_close(signal_extraction(left, right, lam), expected,
                                   rtol=1e-12, atol=1e-300)


def test_signal_extraction_keeps_agreeing_signals_and_suppresses_disagreeing_ones():
    same = torch.tensor([2.0])
    assert signal_extraction(same, same, 1.0) == pytest.approx(2.0)  # (2+2) / (1+e^0)
    assert signal_extraction(same, same + 6, 1.0) < 1e-12  # 10 / (1 + e^36)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_signal_extraction_is_finite_in_half_precision_up_to_1e3_apart(dtype, compiled):
    """Compiled too: fused with its neighbours, it must keep its float32 overflow safety."""
    difference = torch.linspace(-1e3, 1e3, 2001)
    left = (torch.randn(2001) + difference / 2).to(dtype).requires_grad_()
    right = (torch.randn(2001) - difference / 2).to(dtype).requires_grad_()
    lam = torch.tensor(1.0, dtype=dtype, requires_grad=True)
    hands = torch.compile(signal_extraction) if compiled else signal_extraction
    out = hands(left * 1, right * 1, lam)       # with neighbours for the compiler to fuse
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    out.sum().backward()
    for tensor in (left, right, lam):
        assert torch.isfinite(tensor.grad).all()


def test_forward_stages_exposes_every_stage_finest_first():
    model = build_model("dice-t")
    x, t, y = model_inputs(model)
    stages = model.forward_stages(x, t, y)
    assert [tuple(s.shape) for s in stages] == [(2, 8, 32, 32), (2, 8, 16, 16), (2, 8, 8, 8)]
    torch.testing.assert_close(stages[0], model(x, t, y))


def test_lowest_stage_prediction_reaches_the_output():
    model = build_model("dice-t")
    train_then_gradients(model, 3)  # the zero-initialised heads move
    model.zero_grad()
    x, t, y = model_inputs(model)
    model(x, t, y).square().mean().backward()
    lowest = model.stages[-1]
    assert torch.count_nonzero(lowest.head.weight.grad) > 0
    assert torch.count_nonzero(lowest.stem.weight.grad) > 0


def test_stage_loss_weights_are_validated():
    with pytest.raises(ValueError, match="stage_loss_weights"):
        build_model("dice-t", stage_loss_weights=(1.0, 0.5, 0.25, 0.1))


def test_width_and_depth_lists_must_match():
    with pytest.raises(ValueError, match="one width multiplier per stage"):
        build_model("dice-t", width_multipliers=(1, 2), depths=(6, 2, 1))


def nchw_reference_forward(model, x, t, y):
    """DICE as it was written before channels-last, hand padding, the hand-written backward
    passes and the folded MLP: plain NCHW modules and autograd."""
    import torch.nn.functional as F

    def hands(left, right, lam):
        return (left + right) * torch.sigmoid(-lam * (left - right) ** 2)

    def block(b, h, c):
        shift, scale, gate = b.adaLN_modulation(c).chunk(3, dim=1)
        s = hands(b.dwconv_left(h), b.dwconv_right(h), b.lam).permute(0, 2, 3, 1)
        s = b.norm(s) * (1 + scale[:, None, None]) + shift[:, None, None]
        return h + (gate[:, None, None, :] * b.mlp(s)).permute(0, 3, 1, 2)

    c = model.t_embedder(t) + model.y_embedder(y)
    predictions = []
    for k in reversed(range(model.num_stages)):
        x_k = F.avg_pool2d(x, 2 ** k) if k else x
        if predictions:
            gate = model.cascade_gates[k](c)[:, :, None, None]
            x_k = x_k - gate * F.interpolate(predictions[-1][:, :model.in_channels],
                                             scale_factor=2, mode="nearest")
        stage = model.stages[k]
        h = stage.stem(x_k.contiguous())
        for b in stage.blocks:
            h = block(b, h, c)
        predictions.append(stage.head(stage.head_norm(h.permute(0, 2, 3, 1))).permute(0, 3, 1, 2))
    return predictions[-1]


def perturbed_dice(input_size, channels, seed=3):
    """Perturbed weights: an untrained DICE outputs exactly zero, which proves nothing."""
    model = build_model("dice-t", input_size=input_size, in_channels=channels, num_classes=10)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


@pytest.mark.parametrize("input_size,channels", [(8, 4), (32, 1)])
def test_dice_matches_the_nchw_reference_forward_and_its_autograd_gradients(input_size,
                                                                             channels):
    """8x8 takes the coarse maps' hands as dense matrices under autograd (as convolutions
    without) and broadcasts the MLP's modulation; 32x32 folds it in the two finer stages: each
    path against plain autograd."""
    model = perturbed_dice(input_size, channels)
    x, t, y = model_inputs(model, batch_size=3)
    out = model(x, t, y)
    with torch.no_grad():
        sampled = model(x, t, y)
    expected = nchw_reference_forward(model, x, t, y)
    assert out.abs().max() > 1e-3
    for ours in (out, sampled):
        assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    ours = torch.autograd.grad((out * weights).sum(), list(model.parameters()))
    theirs = torch.autograd.grad((expected * weights).sum(), list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), ours, theirs):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-12, name


def test_the_hand_written_backward_passes_pass_gradcheck():
    from dice_core.models.hands import _CpuDepthwise, _DenseHands
    generator = torch.Generator().manual_seed(6)

    def double(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()
    assert torch.autograd.gradcheck(signal_extraction,
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


@pytest.mark.slow
@pytest.mark.timeout(900)     # compiling is most of it, and slows down most under load
def test_compiled_dice_matches_eager_in_sampling_and_in_training():
    """torch.compile (compile_model, as train.compile and evaluate.compile use it) with
    perturbed weights agrees with eager within 1e-5 relative, and so do its gradients within
    1e-4: the compiled backward runs the depthwise backward op (8x8) and the dense hands
    (4x4). Two stages of one block keep the three compiles short (about 90 s here)."""
    from dice_core.models import compile_model
    model = build_model("dice-t", input_size=8, in_channels=4, num_classes=10,
                        width_multipliers=(1, 2), depths=(1, 1))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    x, t, y = model_inputs(model, batch_size=3)
    with torch.no_grad():
        eager = model(x, t, y)
    eager_grads = torch.autograd.grad(model(x, t, y).square().sum(), list(model.parameters()))
    compiled = compile_model(model)
    with torch.no_grad():
        sampled = compiled(x, t, y)
    grads = torch.autograd.grad(compiled(x, t, y).square().sum(), list(model.parameters()))
    assert eager.abs().max() > 1e-3 and model.is_compiled
    assert (sampled - eager).abs().max() <= 1e-5 * eager.abs().max()
    for (name, _), ours, theirs in zip(model.named_parameters(), grads, eager_grads):
        assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max() + 1e-12, name
