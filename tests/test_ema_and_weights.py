"""EMA of the weights, and saving/loading a model as safetensors."""
import pytest
import torch

from dice_core.ema import create_ema, warmed_up_decay
from dice_core.models import build_model
from dice_core.models.serialization import load_model, read_metadata, save_model
from helpers import model_inputs, train_then_gradients


def test_ema_first_update_copies_then_follows_the_decay_formula():
    model = build_model("dice-t")
    ema = create_ema(model, decay=0.9, warmup=False)
    ema.update_parameters(model)
    for averaged, live in zip(ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(averaged, live)

    before = [p.detach().clone() for p in ema.module.parameters()]
    train_then_gradients(model, 1)
    ema.update_parameters(model)
    for old, averaged, live in zip(before, ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(averaged, 0.9 * old + 0.1 * live.detach())
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_warm_up_follows_min_decay_one_plus_n_over_ten_plus_n():
    assert warmed_up_decay(0.999, 1) == pytest.approx(2 / 11)
    assert warmed_up_decay(0.999, 90) == pytest.approx(91 / 100)
    assert warmed_up_decay(0.999, 10**6) == 0.999
    model = build_model("dit-t", input_size=8, in_channels=1, num_classes=2)
    ema = create_ema(model, decay=0.999, warmup=True)
    ema.update_parameters(model)                    # the copy
    before = [p.detach().clone() for p in ema.module.parameters()]
    train_then_gradients(model, 1)
    ema.update_parameters(model)                    # n = 1: decay 2/11
    d = 2 / 11
    for old, averaged, live in zip(before, ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(averaged, d * old + (1 - d) * live.detach())


def test_ema_without_warm_up_is_torchs_own_update_bit_for_bit():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    model = build_model("dit-t", input_size=8, in_channels=1, num_classes=2)
    ours = create_ema(model, decay=0.99, warmup=False)
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=True)
    for _ in range(3):
        train_then_gradients(model, 1)
        ours.update_parameters(model)
        torchs.update_parameters(model)
    for a, b in zip(ours.module.parameters(), torchs.module.parameters()):
        assert torch.equal(a, b)


def test_ema_decay_must_be_below_one():
    with pytest.raises(ValueError, match="decay"):
        create_ema(build_model("dice-t"), decay=1.0, warmup=False)


@pytest.mark.parametrize("name", ["dice-t", "dit-t", "dimr-t"])
def test_save_and_load_round_trip(tmp_path, name):
    model = build_model(name, in_channels=3, num_classes=10)
    train_then_gradients(model, 1)
    path = tmp_path / "weights" / f"{name}.safetensors"
    save_model(model, path)
    assert read_metadata(path) == (name, model.preset_config)
    restored = load_model(path)
    assert restored.in_channels == 3 and restored.num_classes == 10
    x, t, y = model_inputs(model)
    torch.testing.assert_close(restored(x, t, y), model(x, t, y), rtol=0, atol=0)
    assert not list(path.parent.glob("*.partial"))


def test_loading_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not written by save_model"):
        load_model(path)


def test_ema_stays_float32_and_moves_when_the_model_trains_in_bfloat16():
    model = torch.nn.Linear(4, 4)
    ema = create_ema(model, decay=0.9999, warmup=False)
    ema.update_parameters(model)
    model.bfloat16()
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update_parameters(model)
    assert ema.module.weight.dtype == torch.float32
    moved = ema.module.weight - before
    torch.testing.assert_close(moved, 1e-4 * (model.weight.float() - before))
