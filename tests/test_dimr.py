"""DiMR: official sizes, the DICE paper's row, and DiMR-specific behaviour."""
import pytest
import torch

from dice_core.analysis.static import analyze
from dice_core.models import build_model, dimr

XL_OFFICIAL_PARAMS = 505_046_408
# Our heads predict 2*C = 8 channels (noise and learned variance) where the official ones
# predict 4: the 3x3 head convs of the 960- and 480-wide branches gain 4 outputs each.
XL_EXTRA_HEAD_PARAMS = (960 + 480) * 4 * 3 * 3 + 2 * 4
DICE_PAPER_DIMR_PARAMS = 107_452_688


def inputs(batch=4, channels=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=g)
    t = torch.tensor([0, 999, 500, 250, 10, 750][:batch])
    y = torch.tensor([3, 1000, 7, 999, 0, 42][:batch])  # 1000 is the null class
    return x, t, y


def test_xl_matches_the_official_design():
    report = analyze("dimr-xl-2r", measure_throughput=False)
    assert report.trainable_params == XL_OFFICIAL_PARAMS + XL_EXTRA_HEAD_PARAMS
    assert report.trainable_params == pytest.approx(XL_OFFICIAL_PARAMS, rel=0.005)
    assert report.macs == pytest.approx(160.2e9, rel=0.01)
    # QK^T and AV over 256 patches + the class token, in each of the 39 blocks.
    assert report.attention_macs == 39 * 2 * 257**2 * 960


def test_dice_paper_preset_matches_the_paper_row():
    report = analyze("dimr-dice-paper", measure_throughput=False)
    assert report.trainable_params == DICE_PAPER_DIMR_PARAMS
    # The paper's 32.68 G, like its DiT figure, leaves attention out.
    assert report.macs_without_attention == pytest.approx(32.68e9, rel=0.005)


def test_tiny_preset_is_sized_like_dice_t():
    assert analyze("dimr-t", measure_throughput=False).trainable_params == pytest.approx(
        analyze("dice-t", measure_throughput=False).trainable_params, rel=0.15)


def test_untrained_model_predicts_zero_at_every_stage():
    model = build_model("dimr-t")
    x, t, y = inputs()
    full, low = model.forward_stages(x, t, y)
    assert full.shape == (4, 8, 32, 32) and low.shape == (4, 8, 16, 16)
    assert torch.equal(model(x, t, y), full)
    assert not full.any() and not low.any()


def test_shapes_follow_the_overrides():
    model = build_model("dimr-t", in_channels=1, num_classes=10, input_size=28)
    x = torch.randn(2, 1, 28, 28)
    t, y = torch.tensor([5, 900]), torch.tensor([9, 10])
    assert [s.shape for s in model.forward_stages(x, t, y)] == [(2, 2, 28, 28), (2, 2, 14, 14)]
    assert model.stage_loss_weights == (1.0, 0.25)


def test_time_condition_is_the_official_proxy():
    tau = dimr.time_condition(torch.tensor([0, 499, 999]))
    torch.testing.assert_close(tau, torch.tensor([-0.998, 0.0, 1.0]))


def test_bad_architecture_fails_at_construction():
    with pytest.raises(ValueError, match="odd depth"):
        build_model("dimr-t", transformer_depth=8)
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        build_model("dimr-t", num_heads=3)
