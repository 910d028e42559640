"""The two ablations of DICE (section 3.1's cascade, section 3.2's hands) as presets one change
away from dice-t: they build, start at zero, train every parameter and save like any preset."""
import pytest
import torch

from dice_core.models import build_model
from dice_core.models.serialization import load_model, save_model
from helpers import model_inputs, train_then_gradients

ABLATIONS = ["dice-t-onehand", "dice-t-residual"]
EMBEDDED = {"input_size": 8, "in_channels": 4, "num_classes": 10}


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_has_the_output_shape_and_outputs_exactly_zero_untrained(name):
    model = build_model(name, **EMBEDDED)
    out = model(*model_inputs(model))
    assert out.shape == (2, 8, 8, 8)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("name", ABLATIONS)
def test_every_parameter_of_an_ablation_has_a_gradient_within_six_steps(name):
    zero = [n for n, g in train_then_gradients(build_model(name, **EMBEDDED), 6).items()
            if g is None or not torch.count_nonzero(g)]
    assert not zero, f"parameters still without a gradient after six steps: {zero}"


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_saves_and_loads_to_the_same_function(name, tmp_path):
    model = build_model(name, **EMBEDDED)
    train_then_gradients(model, 3)
    save_model(model, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path / "model.safetensors")
    inputs = model_inputs(model)
    assert model(*inputs).abs().max() > 0
    assert torch.equal(loaded(*inputs), model(*inputs))


def test_one_hand_is_a_plain_convnext_block():
    model = build_model("dice-t-onehand", **EMBEDDED)
    block = model.stages[0].blocks[0]
    assert not hasattr(block, "dwconv_right") and not hasattr(block, "lam")
    names = {n for n, _ in model.named_parameters()}
    assert not any("dwconv_right" in n or n.endswith(".lam") for n in names)


def test_residual_cascade_predicts_from_the_finest_stage_alone():
    model = build_model("dice-t-residual", **EMBEDDED)
    assert [hasattr(stage, "head") for stage in model.stages] == [True, False, False]
    assert not hasattr(model, "cascade_gates")
    train_then_gradients(model, 6)
    x, t, y = model_inputs(model)
    stages = model.forward_stages(x, t, y)
    assert len(stages) == 1 and torch.equal(stages[0], model(x, t, y))


def test_residual_cascade_carries_features_not_a_corrected_latent():
    """Zeroing the projections cuts the coarser stages off: the output then no longer
    depends on them, which a latent correction would not do."""
    model = build_model("dice-t-residual", **EMBEDDED)
    train_then_gradients(model, 6)
    x, t, y = model_inputs(model)
    before = model(x, t, y)
    with torch.no_grad():
        model.stages[2].stem.weight.mul_(3)
    assert not torch.allclose(model(x, t, y), before)
    with torch.no_grad():
        for projection in model.cascade_projections:
            projection.weight.zero_()
            projection.bias.zero_()
        cut = model(x, t, y)
        model.stages[1].stem.weight.mul_(3)
    assert torch.equal(model(x, t, y), cut)


def test_residual_cascade_trains_only_its_finest_output():
    with pytest.raises(ValueError, match="stage_loss_weights needs 1 to 1 entries"):
        build_model("dice-t-residual", stage_loss_weights=(1.0, 0.5))


def test_a_block_has_one_or_two_hands():
    with pytest.raises(ValueError, match="1 or 2 hands"):
        build_model("dice-t", hands=3)
