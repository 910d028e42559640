"""DICE-specific behaviour: the 'hands' function and the cascade."""
import pytest
import torch

from dice_core.models import build_model, signal_extraction
from helpers import model_inputs, train_then_gradients


@pytest.mark.parametrize("form", ["reference", "kernel"])
def test_signal_extraction_is_the_papers_formula_in_float64(form):
    function = getattr(signal_extraction, form)
    function = function.run if form == "kernel" else function
    generator = torch.Generator().manual_seed(1)
    left = torch.randn(4096, dtype=torch.float64, generator=generator) * 5
    right = torch.randn(4096, dtype=torch.float64, generator=generator) * 5
    for lam in (0.0, 0.3, 1.0, 4.0):
        expected = (left + right) / (1 + torch.exp((left - right) ** 2 * lam))
        torch.testing.assert_close(function(left, right, lam), expected,
                                   rtol=1e-12, atol=1e-300)


def test_signal_extraction_keeps_agreeing_signals_and_suppresses_disagreeing_ones():
    same = torch.tensor([2.0])
    assert signal_extraction(same, same, 1.0) == pytest.approx(2.0)  # (2+2) / (1+e^0)
    assert signal_extraction(same, same + 6, 1.0) < 1e-12  # 10 / (1 + e^36)


@pytest.mark.parametrize("form", ["kernel", "reference",
                                  pytest.param("compiled", marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_signal_extraction_is_finite_in_half_precision_up_to_1e3_apart(dtype, form):
    """Compiled too: fused with its neighbours, it must keep its float32 overflow safety."""
    difference = torch.linspace(-1e3, 1e3, 2001)
    left = (torch.randn(2001) + difference / 2).to(dtype).requires_grad_()
    right = (torch.randn(2001) - difference / 2).to(dtype).requires_grad_()
    lam = torch.tensor(1.0, dtype=dtype, requires_grad=True)
    hands = {"kernel": signal_extraction.kernel.run, "reference": signal_extraction.reference,
             "compiled": torch.compile(signal_extraction)}[form]
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


def perturbed_dice(input_size, channels, seed=3):
    """Perturbed weights: an untrained DICE outputs exactly zero, which proves nothing."""
    model = build_model("dice-t", input_size=input_size, in_channels=channels, num_classes=10)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


@pytest.mark.slow
@pytest.mark.timeout(900)     # compiling is most of it, and slows down most under load
def test_compiled_dice_matches_eager_in_sampling_and_in_training():
    """torch.compile (compile_model, as train.compile and evaluate.compile use it) with
    perturbed weights agrees with eager within 1e-5 relative, and so do its gradients within
    1e-4: the compiled backward runs the depthwise backward op (8x8) and the dense hands
    (4x4). Two stages of one block keep the three compiles short."""
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
