"""The benchmarks' shared parts: the variants they time and the ratios they report."""
import torch

from dice_core.benchmarking import Variant, ratios_to_dit, variants
from dice_core.models import kernels
from test_dice import perturbed_dice


def test_ratios_are_to_dit_in_the_same_compile_mode_and_per_multiply_add():
    seconds = {Variant("dice-t"): 3.0, Variant("dit-t"): 1.0, Variant("dice-t", True): 1.0,
               Variant("dit-t", True): 0.5}
    ratios = ratios_to_dit(seconds, {"dice-t": 200, "dit-t": 100})
    assert ratios[Variant("dice-t")] == (3.0, 1.5)
    assert ratios[Variant("dice-t", True)] == (2.0, 1.0)
    assert ratios[Variant("dit-t")] == (1.0, 1.0)


def test_variants_add_dice_without_kernels_and_compiled_copies():
    runs = variants(["dice-t", "dit-t"], compiled=True)
    assert [(v.preset, v.kernels_label, v.compiled) for v in runs] == [
        ("dice-t", "on", False), ("dit-t", "-", False), ("dice-t", "off", False),
        ("dice-t", "on", True), ("dit-t", "-", True)]


def test_a_variant_without_kernels_runs_the_reference_forms_inside_its_step():
    model = perturbed_dice(8, 4)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([1, 500, 999]), torch.tensor([0, 3, 9])
    with_kernels = Variant("dice-t").scoped(model)(x, t, y)
    reference = Variant("dice-t", kernels=False).scoped(model)(x, t, y)
    assert kernels.enabled()
    assert "_DenseHandsBackward" in type_names(with_kernels.grad_fn)
    assert "_DenseHandsBackward" not in type_names(reference.grad_fn)
    assert (reference - with_kernels).abs().max() <= 1e-5 * with_kernels.abs().max()


def type_names(grad_fn):
    """Names of every node of the autograd graph behind ``grad_fn``."""
    names, stack, seen = set(), [grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names
