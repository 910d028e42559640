"""The benchmarks' shared parts: the variants they time and the ratios they report."""
import torch

from dice_core.benchmarking import Variant, ratios_to_dit, variants
from test_dice import perturbed_dice


def test_ratios_are_to_dit_in_the_same_compile_mode_and_per_multiply_add():
    seconds = {Variant("dice-t"): 3.0, Variant("dit-t"): 1.0, Variant("dice-t", True): 1.0,
               Variant("dit-t", True): 0.5}
    ratios = ratios_to_dit(seconds, {"dice-t": 200, "dit-t": 100})
    assert ratios[Variant("dice-t")] == (3.0, 1.5)
    assert ratios[Variant("dice-t", True)] == (2.0, 1.0)
    assert ratios[Variant("dit-t")] == (1.0, 1.0)


def test_variants_add_nchw_dice_and_compiled_copies():
    runs = variants(["dice-t", "dit-t"], compiled=True)
    assert [(v.preset, v.layout, v.compiled) for v in runs] == [
        ("dice-t", "NHWC", False), ("dit-t", "-", False), ("dice-t", "NCHW", False),
        ("dice-t", "NHWC", True), ("dit-t", "-", True)]


def test_nchw_dice_runs_its_blocks_nchw_and_computes_the_same_function():
    model = perturbed_dice(8, 4)
    layouts = []
    model.stages[0].blocks[0].register_forward_pre_hook(
        lambda block, args: layouts.append(args[0].is_contiguous()))
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([1, 500, 999]), torch.tensor([0, 3, 9])
    nhwc = model(x, t, y)
    model.channels_last = False
    nchw = model(x, t, y)
    assert layouts == [False, True]
    assert nhwc.abs().max() > 1e-3
    assert (nchw - nhwc).abs().max() <= 1e-5 * nhwc.abs().max()
