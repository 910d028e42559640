"""`dice import`: DiT's released checkpoints (the official key names and shapes of
facebookresearch/DiT's models.py) as this project's weights."""
import math

import pytest
import torch
import torch.nn.functional as F

from dice_core.errors import InputError
from dice_core.models.dit_import import dit_name, import_dit
from dice_core.models.serialization import load_model, read_metadata, read_trained_on
from pipelines.cli import main as dice_main

# dit-t's sizes; a 4x4 token grid of 2x2 patches: 8x8 latents, images of 64x64 through the SD-VAE
DEPTH, WIDTH, HEADS, PATCH, GRID, CHANNELS = 5, 80, 4, 2, 4, 4


def official_state_dict(depth=DEPTH, width=WIDTH, patch=PATCH, grid=GRID, classes=1000,
                        out_channels=2 * CHANNELS, seed=0):
    """A state dict of DiT's models.py, written from its module names and shapes (timm's
    PatchEmbed, Attention and Mlp): random values everywhere, none zero, so that every tensor
    counts in the forward pass."""
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return torch.randn(shape, generator=generator) * 0.2

    weights = {"pos_embed": tensor(1, grid * grid, width),
               "x_embedder.proj.weight": tensor(width, CHANNELS, patch, patch),
               "x_embedder.proj.bias": tensor(width),
               "t_embedder.mlp.0.weight": tensor(width, 256),
               "t_embedder.mlp.0.bias": tensor(width),
               "t_embedder.mlp.2.weight": tensor(width, width),
               "t_embedder.mlp.2.bias": tensor(width),
               "y_embedder.embedding_table.weight": tensor(classes + 1, width)}
    for block in range(depth):
        for name, (rows, columns) in {"attn.qkv": (3 * width, width), "attn.proj": (width, width),
                                      "mlp.fc1": (4 * width, width), "mlp.fc2": (width, 4 * width),
                                      "adaLN_modulation.1": (6 * width, width)}.items():
            weights[f"blocks.{block}.{name}.weight"] = tensor(rows, columns)
            weights[f"blocks.{block}.{name}.bias"] = tensor(rows)
    weights |= {"final_layer.linear.weight": tensor(patch * patch * out_channels, width),
                "final_layer.linear.bias": tensor(patch * patch * out_channels),
                "final_layer.adaLN_modulation.1.weight": tensor(2 * width, width),
                "final_layer.adaLN_modulation.1.bias": tensor(2 * width)}
    return weights


def dit_forward(w, x, t, y, heads=HEADS, patch=PATCH):
    """DiT's models.py forward, written out with the official tensors."""
    def linear(name, inputs):
        return F.linear(inputs, w[f"{name}.weight"], w[f"{name}.bias"])

    def modulate(inputs, shift, scale):
        return inputs * (1 + scale[:, None]) + shift[:, None]

    def norm(inputs):
        return F.layer_norm(inputs, inputs.shape[-1:], eps=1e-6)

    tokens = F.conv2d(x, w["x_embedder.proj.weight"], w["x_embedder.proj.bias"], stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2) + w["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    frequencies = torch.cat([torch.cos(args), torch.sin(args)], -1).to(x.dtype)
    c = linear("t_embedder.mlp.2", F.silu(linear("t_embedder.mlp.0", frequencies)))
    c = c + w["y_embedder.embedding_table.weight"][y]
    batch, count, width = tokens.shape
    for block in range(sum(name.endswith("attn.qkv.weight") for name in w)):
        b = f"blocks.{block}"
        shift1, scale1, gate1, shift2, scale2, gate2 = linear(f"{b}.adaLN_modulation.1",
                                                              F.silu(c)).chunk(6, dim=1)
        qkv = linear(f"{b}.attn.qkv", modulate(norm(tokens), shift1, scale1))
        q, k, v = qkv.reshape(batch, count, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (width // heads) ** -0.5).softmax(dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, count, width)
        tokens = tokens + gate1[:, None] * linear(f"{b}.attn.proj", mixed)
        hidden = F.gelu(linear(f"{b}.mlp.fc1", modulate(norm(tokens), shift2, scale2)),
                        approximate="tanh")
        tokens = tokens + gate2[:, None] * linear(f"{b}.mlp.fc2", hidden)
    shift, scale = linear("final_layer.adaLN_modulation.1", F.silu(c)).chunk(2, dim=1)
    out = linear("final_layer.linear", modulate(norm(tokens), shift, scale))
    side, channels = int(count ** 0.5), out.shape[-1] // patch ** 2
    out = torch.einsum("nhwpqc->nchpwq", out.reshape(batch, side, side, patch, patch, channels))
    return out.reshape(batch, channels, side * patch, side * patch)


@pytest.fixture
def released(tmp_path):
    weights = official_state_dict()
    path = tmp_path / "DiT-T-2-64x64.pt"
    torch.save(weights, path)
    return path, weights


def test_every_tensor_lands_where_dits_forward_reads_it(released, tmp_path):
    path, weights = released
    out = tmp_path / "dit-t.safetensors"
    assert dice_main(["import", str(path), "--model", "dit-t", "--out", str(out)]) == 0
    model = load_model(out).eval()
    state = model.state_dict()
    assert sorted(dit_name(name) for name in state) == sorted(weights)
    for name, tensor in state.items():
        assert torch.equal(tensor, weights[dit_name(name)]), name
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, CHANNELS, GRID * PATCH, GRID * PATCH, generator=generator,
                    dtype=torch.float64)
    t, y = torch.tensor([0, 499, 999]), torch.tensor([0, 7, 1000])   # 1000: the null class
    exact = {name: tensor.double() for name, tensor in weights.items()}
    with torch.no_grad():   # in float64, where a misplaced tensor cannot hide in rounding
        torch.testing.assert_close(model.double()(x, t, y), dit_forward(exact, x, t, y),
                                   rtol=1e-9, atol=1e-9)
    preset, config = read_metadata(out)
    assert preset == "dit-t" and config["input_size"] == 8 and config["num_classes"] == 1000
    assert read_trained_on(out) == {"source": "imagenet", "resolution": 64,
                                    "latent_shape": [4, 8, 8],
                                    "autoencoder": "pretrained, scale factor 0.18215"}
    assert not model.pos_embed.requires_grad


def test_a_training_checkpoint_imports_its_ema(tmp_path, released):
    _, weights = released
    other = official_state_dict(seed=1)
    path = tmp_path / "0400000.pt"
    torch.save({"model": other, "ema": weights, "opt": {}, "args": None}, path)
    assert torch.equal(import_dit(path, "dit-t").pos_embed, weights["pos_embed"])
    torch.save({"model": other}, path)
    assert torch.equal(import_dit(path, "dit-t").pos_embed, other["pos_embed"])


@pytest.mark.parametrize("weights, preset, message", [
    (official_state_dict(), "dit-s-2",
     r"pos_embed has shape \(1, 16, 80\), dit-s-2 expects \(1, 16, 384\) "
     r"\(the file looks like dit-t\)"),
    (official_state_dict(depth=DEPTH + 1), "dit-t", r"blocks\.5\.attn\.qkv\.weight has no place"),
    (official_state_dict(depth=DEPTH - 1), "dit-t",
     r"has no blocks\.4\.attn\.qkv\.weight, which dit-t needs \(10 missing\)"),
    (official_state_dict(out_channels=CHANNELS), "dit-t",   # learn_sigma=False
     r"final_layer\.linear\.weight has shape \(16, 80\), dit-t expects \(32, 80\)"),
    (official_state_dict(classes=10), "dit-t",
     r"y_embedder\.embedding_table\.weight has shape \(11, 80\)"),
    ({"pos_embed": torch.zeros(1, 16, WIDTH), "stages.0.head.weight": torch.zeros(8)}, "dit-t",
     r"stages\.0\.head\.weight has no place in dit-t"),   # another family's keys
    ({"model.diffusion": torch.zeros(2)}, "dit-t", "not a DiT checkpoint"),
    (official_state_dict(), "dimr-t", "dimr-t is a dimr model"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_first_key(tmp_path, weights,
                                                                         preset, message):
    path = tmp_path / "checkpoint.pt"
    torch.save(weights, path)
    with pytest.raises(InputError, match=message):
        import_dit(path, preset)


def test_the_command_names_the_key_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "deeper.pt"
    torch.save(official_state_dict(depth=DEPTH + 1), path)
    out = tmp_path / "out.safetensors"
    assert dice_main(["import", str(path), "--model", "dit-t", "--out", str(out)]) == 2
    assert "blocks.5.attn.qkv.weight has no place in dit-t" in capsys.readouterr().err
    assert not out.exists()
    path.write_bytes(b"not a checkpoint")
    assert dice_main(["import", str(path), "--model", "dit-t"]) == 2
    assert "is not a readable PyTorch checkpoint" in capsys.readouterr().err
