"""DiMR: official sizes, the DICE paper's row, and DiMR-specific behaviour."""
import pytest
import torch

from dice_core.analysis.static import analyze, count_parameters, preset_macs
from dice_core.models import build_model, dimr
from dice_core.models.registry import resolved_config

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


def test_xl_matches_the_official_counts_it_was_built_to():
    report = analyze("dimr-xl-2r", measure_throughput=False)
    assert report.trainable_params == XL_OFFICIAL_PARAMS + XL_EXTRA_HEAD_PARAMS
    assert report.trainable_params == pytest.approx(XL_OFFICIAL_PARAMS, rel=0.005)
    assert report.macs == pytest.approx(160.2e9, rel=0.01)
    # QK^T and AV over 256 patches + the class token, in each of the 39 blocks.
    assert report.attention_macs == 39 * 2 * 257**2 * 960


def test_dice_paper_preset_matches_the_paper_row_it_was_fitted_to():
    report = analyze("dimr-dice-paper", measure_throughput=False)
    assert report.trainable_params == DICE_PAPER_DIMR_PARAMS
    # The paper's 32.68 G, like its DiT figure, leaves attention out.
    assert report.macs_without_attention == pytest.approx(32.68e9, rel=0.005)


def dimr_parameters(in_channels=4, input_size=32, num_classes=1000, patch_size=2,
                    transformer_width=960, transformer_depth=39, num_heads=16,
                    convnext_width=480, convnext_depth=21, mlp_ratio=2.0, kernel_size=7,
                    head_kernel_size=3):
    """Trainable parameters of DiMR counted layer by layer from its design (module
    docstring of dice_core.models.dimr), with 2*C output channels and a null-class row.
    The heads split the width and add no parameters."""
    out = 2 * in_channels

    def linear(inputs, outputs):
        return inputs * outputs + outputs

    def time_dependent(size):          # p0, p1, slope, offset
        return 4 * size

    def gated_mlp(width, hidden):      # TD-RMSNorm, w0, w1, w2
        return time_dependent(width) + 2 * linear(width, hidden) + linear(hidden, width)

    def branch(width, grid, stride, block, depth):
        embed = linear(in_channels * stride * stride, width) + grid * grid * width
        skips = depth // 2 * linear(2 * width, width)
        head = 2 * time_dependent(width) + linear(width * head_kernel_size ** 2, out)
        return embed + depth * block + skips + head

    t, c = transformer_width, convnext_width
    attention = time_dependent(t) + 3 * t * t + linear(t, t)     # qkv has no bias
    transformer_block = attention + gated_mlp(t, int(t * mlp_ratio))
    convnext_block = c * kernel_size ** 2 + c + gated_mlp(c, int(c * mlp_ratio))
    states = t * (transformer_depth + 1)
    cascade = 2 * time_dependent(states) + linear(states, patch_size ** 2 * c) \
        + 2 * time_dependent(c)
    return ((num_classes + 1) * t
            + branch(t, input_size // patch_size, patch_size, transformer_block,
                     transformer_depth)
            + cascade + branch(c, input_size, 1, convnext_block, convnext_depth))


def test_the_parameter_formula_gives_the_paper_row():
    assert dimr_parameters(transformer_width=512, transformer_depth=29, convnext_width=256,
                           convnext_depth=15) == DICE_PAPER_DIMR_PARAMS


@pytest.mark.parametrize("overrides", [
    {},
    {"in_channels": 1, "input_size": 28, "num_classes": 10},
    {"mlp_ratio": 3.0, "kernel_size": 5, "head_kernel_size": 1, "patch_size": 4},
    {"transformer_width": 48, "transformer_depth": 3, "convnext_width": 24,
     "convnext_depth": 7}])
def test_parameters_follow_the_design_at_other_sizes(overrides):
    with torch.device("meta"):
        trainable, _ = count_parameters(build_model("dimr-t", **overrides))
    assert trainable == dimr_parameters(**{**resolved_config("dimr-t"), **overrides})


def test_attention_is_qk_and_av_over_the_patches_and_class_token_in_every_block():
    macs = preset_macs("dimr-t", input_size=24, patch_size=4, transformer_depth=3)
    tokens = (24 // 4) ** 2 + 1
    assert macs.attention == 3 * 2 * tokens ** 2 * resolved_config("dimr-t")["transformer_width"]


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
