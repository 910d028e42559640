"""Small helpers the tests share."""
import torch

TINY_MODELS = ["dice-t", "dit-t", "dimr-t"]
PAPER_MODELS = ["dice-xl", "dit-xl-2", "dimr-xl-2r", "dimr-dice-paper"]


def model_inputs(model, batch_size=2, seed=0):
    """A noisy latent, timesteps and labels that fit ``model``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, model.in_channels, model.input_size, model.input_size,
                    generator=generator)
    t = torch.randint(0, 1000, (batch_size,), generator=generator)
    y = torch.randint(0, model.num_classes, (batch_size,), generator=generator)
    return x, t, y


def train_then_gradients(model, steps):
    """Take ``steps`` AdamW steps on an MSE over the stages the model weights in its loss,
    then return the gradients of one more backward pass.

    adaLN-Zero and zero heads mean a parameter may get an exactly-zero gradient until the
    zero-initialised layers after it have moved: a few steps are needed before all are live
    (five for the coarsest DICE stage).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t, y = model_inputs(model, batch_size=4)
    weights = model.stage_loss_weights  # stages beyond the first are trained only if weighted
    targets = [torch.randn_like(out) for out in model.forward_stages(x, t, y)[:len(weights)]]
    for _ in range(steps + 1):
        optimizer.zero_grad(set_to_none=True)
        outputs = model.forward_stages(x, t, y)
        sum(w * torch.nn.functional.mse_loss(out, target)
            for w, out, target in zip(weights, outputs, targets)).backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        optimizer.step()
    return grads


def save_tiny_vae(folder):
    """A random-weight AutoencoderKL (2 levels: 8x downsampling would need 4) saved where a
    user's local VAE folder would be."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                  latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(folder)
    return folder


def tiny_latents(root, *, num_classes, per_class, image_size, resolution, shard_size):
    """Pixel-space latent shards of coloured shapes, made under ``root``; returns the folder."""
    from dice_core.data import PixelEncoder, Shapes, encode_dataset, prepare_dataset
    source = Shapes(num_classes=num_classes, image_size=image_size,
                    count_per_class={"train": per_class}, seed=0)
    prepare_dataset(source, root / "prepared", splits=["train"], resolution=resolution,
                    shard_size=shard_size, progress=False)
    encode_dataset(PixelEncoder(), root / "prepared", root / "latents", batch_size=64,
                   progress=False)
    return root / "latents"


def copy_project(destination):
    """The code and stage graph of this project, for a `dvc repro` in a scratch repository."""
    import shutil
    from pathlib import Path
    project = Path(__file__).resolve().parents[1]
    for item in ("dice_core", "pipelines", "profiles"):
        shutil.copytree(project / item, destination / item,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for item in ("dvc.yaml", ".dvcignore"):
        shutil.copy(project / item, destination / item)


def training_params(tmp_path, shards, uri, **train) -> dict:
    """The project's params.yaml shrunk for a test: dit-t on ``shards``, 6 steps of 16,
    checkpoints every 3, runs under ``tmp_path``, MLflow at ``uri``, no reference."""
    from pathlib import Path

    import yaml
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["train"].update({"models": ["dit-t"], "data": str(shards),
                         "output": str(tmp_path / "runs"), "steps": 6, "global_batch": 16,
                         "log_every": 1, "ckpt_every": 3, "eval_every": 10**6,
                         "loader_workers": 0, "device": "cpu", "precision": "fp32",
                         "activation_checkpointing": False, **train})
    raw["tracking"].update(uri=uri, experiment=tmp_path.name, log_images=False,
                           retry_seconds=0.1)
    raw["evaluate"].update(reference=str(tmp_path / "no-reference.npz"), samples=4, steps=10,
                           in_training={"samples": None, "sampler": None, "steps": None,
                                        "cfg_scales": None})
    return with_runs(raw)


def with_runs(raw: dict) -> dict:
    """``raw`` with train.runs following its train.models and train.seeds (as `dice runs`)."""
    from pipelines.settings import with_runs as written
    return written(raw)


def training_job(tmp_path, shards, uri, **train):
    """``training_params`` as the TrainingJob that train_model takes."""
    from dice_core.config import Params, TrainingJob
    return TrainingJob.of(Params.model_validate(training_params(tmp_path, shards, uri, **train)))


def tiny_autoencoder_params(**overrides) -> dict:
    """An autoencoder stage that trains in a second or two, for scratch `dvc repro` runs."""
    return {"block_out_channels": [8, 16], "steps": 2, "batch_size": 4, "holdout": 2,
            "device": "cpu", **overrides}


def scratch_project(folder, resolution):
    """This project's code in ``folder`` with params for 8 shapes of 2 classes; returns the
    params (not yet written, for the test to adjust)."""
    from pathlib import Path

    import yaml
    copy_project(folder)
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["prepare"].update(source="shapes", resolution=resolution, shard_size=4,
                             shapes={"num_classes": 2, "image_size": resolution,
                                     "count_per_class": {"train": 4}, "seed": 0})
    params["encode"]["device"] = "cpu"
    params["autoencoder"].update(tiny_autoencoder_params())
    params["evaluate"].update(samples=4, steps=2, batch_size=4, device="cpu",
                              in_training={"samples": 4, "sampler": None, "steps": 2,
                                           "cfg_scales": None})
    params["classifier"].update(epochs=1, input_size=resolution, device="cpu")
    return params


def random_inception_weights(path, calibration_images=None):
    """A randomly initialised FID Inception (BN statistics too) saved as a state dict with the
    standard key names and shapes. Random BN statistics give nearly the same features for every
    image; with ``calibration_images`` they are those images' batch statistics instead, so that
    features differ from image to image as a trained network's do."""
    from dice_core.metrics import FIDInceptionV3
    network = FIDInceptionV3()
    if calibration_images is None:
        generator = torch.Generator().manual_seed(0)
        for name, buffer in network.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    else:
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None   # the running statistics become the batch's
        with torch.no_grad():
            network.train()(torch.from_numpy(calibration_images))
    torch.save(network.state_dict(), path)
    return network.eval()


def dit_size(in_channels=4, input_size=32, num_classes=1000, patch_size=2, hidden_size=1152,
             depth=28, mlp_ratio=4.0, **_):
    """(trainable parameters, forward multiply-adds at batch 1, attention's share of them) of
    DiT counted layer by layer from the DiT paper's design: learned sigma (2C outputs), a
    null-class row, a frozen sin-cos position table; norms and elementwise ops cost nothing."""
    c, h, p, n = in_channels, hidden_size, patch_size, (input_size // patch_size) ** 2
    m, out = int(h * mlp_ratio), p * p * 2 * c
    params = (c * p * p * h + h                      # patch embedding
              + 256 * h + h + h * h + h              # timestep MLP
              + (num_classes + 1) * h                # class table
              + depth * (3 * h * h + 3 * h + h * h + h + h * m + m + m * h + h
                         + 6 * h * h + 6 * h)        # qkv, proj, MLP, adaLN of each block
              + 2 * h * h + 2 * h + h * out + out)   # final adaLN and linear
    attention = depth * 2 * n * n * h                # QK^T and AV
    macs = (n * h * c * p * p + 256 * h + h * h
            + depth * (6 * h * h + n * (4 * h * h + 2 * h * m)) + attention
            + 2 * h * h + n * h * out)
    return params, macs, attention


def train_command(params_file, model="dit-t") -> list[str]:
    """The train stage's own command, `python -m pipelines.train`, for ``model``."""
    import sys
    return [sys.executable, "-m", "pipelines.train", "--params", str(params_file),
            "--model", model]


def subprocess_env(**variables) -> dict[str, str]:
    """This environment for a training subprocess, with ``variables``: without this process's
    rank and rendezvous port (an engine here set them), with the project's built torch ops."""
    from pathlib import Path

    from dice_core.training.engine import child_process_env
    env = child_process_env()
    env.setdefault("TORCH_EXTENSIONS_DIR",
                   str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))
    return {**env, **variables}
