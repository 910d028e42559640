"""The model zoo's contract, tested on every family."""
import pytest
import torch

from dice_core.models import build_model, list_models
from helpers import PAPER_MODELS, TINY_MODELS, model_inputs, train_then_gradients


def test_registry_lists_every_family():
    names = list_models()
    for name in TINY_MODELS + PAPER_MODELS:
        assert name in names
    assert set(list_models("dit")) >= {f"dit-{s}-{p}" for s in "s b l xl".split()
                                       for p in (2, 4, 8)}


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'dice-xxl'") as error:
        build_model("dice-xxl")
    for name in ("dice-xl", "dit-xl-2", "dimr-xl-2r"):
        assert name in str(error.value)


def test_unknown_override_is_a_clear_error():
    with pytest.raises(ValueError, match="does not accept these overrides"):
        build_model("dice-t", heads=3)


@pytest.mark.parametrize("name, input_size, multiple", [
    ("dice-t", 30, 4), ("dit-t", 31, 2), ("dit-s-8", 36, 8), ("dimr-t", 31, 2)])
def test_input_size_that_does_not_fit_fails_at_construction(name, input_size, multiple):
    with pytest.raises(ValueError, match=f"input_size {input_size} does not fit.*multiple of "
                                         f"{multiple}"):
        build_model(name, input_size=input_size)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_wrong_input_shape_at_forward_is_named(name):
    model = build_model(name)
    x, t, y = model_inputs(model)
    with pytest.raises(ValueError, match="was built for inputs of shape"):
        model(x[:, :, :16, :16], t, y)


@pytest.mark.parametrize("name", TINY_MODELS + ["dice-s", "dit-s-4"])
@pytest.mark.parametrize("overrides", [{}, {"in_channels": 3, "input_size": 16,
                                            "num_classes": 10}])
def test_untrained_model_outputs_exactly_zero(name, overrides):
    model = build_model(name, **overrides)
    x, t, y = model_inputs(model)
    out = model(x, t, y)
    assert out.shape == (2, 2 * model.in_channels, model.input_size, model.input_size)
    assert torch.count_nonzero(out) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_models_output_exactly_zero_untrained(name):
    model = build_model(name)
    with torch.no_grad():
        out = model(*model_inputs(model, batch_size=1))
    assert out.shape == (1, 8, 32, 32)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("name", TINY_MODELS)
def test_one_optimiser_step_gives_every_trainable_parameter_a_gradient(name):
    unconnected = [n for n, g in train_then_gradients(build_model(name), 1).items() if g is None]
    assert not unconnected, f"parameters the loss does not reach: {unconnected}"
    zero = [n for n, g in train_then_gradients(build_model(name), 6).items()
            if not torch.count_nonzero(g)]
    assert not zero, f"parameters still without a gradient after six steps: {zero}"


@pytest.mark.parametrize("name", TINY_MODELS)
def test_activation_checkpointing_gives_the_same_gradients(name):
    reference = build_model(name)
    train_then_gradients(reference, 3)  # leave the zero init so every block matters
    checkpointed = build_model(name)
    checkpointed.load_state_dict(reference.state_dict())
    checkpointed.set_activation_checkpointing(True)
    x, t, y = model_inputs(reference)
    grads = []
    for model in (reference, checkpointed):
        model.zero_grad()
        model(x, t, y).square().mean().backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(plain, recomputed)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_time_and_class_reach_the_output(name):
    model = build_model(name)
    with torch.no_grad():  # move every weight off its (partly zero) init
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, t, y = model_inputs(model)
    out = model(x, t, y)
    assert not torch.allclose(out, model(x, t.flip(0), y))
    assert not torch.allclose(out, model(x, t, y.flip(0)))


@pytest.mark.parametrize("name", TINY_MODELS)
def test_bf16_forward_stays_in_bf16_and_finite(name):
    model = build_model(name).to(torch.bfloat16)
    x, t, y = model_inputs(model)
    out = model(x.to(torch.bfloat16), t, y)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()

