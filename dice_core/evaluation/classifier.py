"""A small classifier trained on the real training images: does a generated sample of class y
look like y? Its held-out accuracy on real images says how far to trust that score."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from dice_core.durable import replace_file, write_json_atomic
from dice_core.metrics.network_io import to_rgb_nchw
from dice_core.seeding import seeded_generator

CLASSIFIER_SEED = 6


class SmallClassifier(nn.Module):
    """Three conv blocks and a linear head on images resized to ``input_size``."""

    def __init__(self, num_classes: int, input_size: int = 32, width: int = 32):
        super().__init__()
        self.input_size = input_size
        layers, channels = [], 3
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.GELU(),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC images, RGB or grey -> class logits."""
        x = to_rgb_nchw(images) / 127.5 - 1
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              antialias=True, align_corners=False)
        return self.head(self.features(x))


def holdout_split(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([seed, CLASSIFIER_SEED]).permutation(count)
    held = max(1, int(round(count * fraction)))
    return order[held:], order[:held]


@torch.no_grad()
def predict(model: SmallClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    return np.concatenate([model(torch.from_numpy(images[i:i + batch_size]).to(device))
                           .argmax(1).cpu().numpy() for i in range(0, len(images), batch_size)])


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int,
                     batch_size: int, lr: float, input_size: int, holdout_fraction: float,
                     seed: int, device: torch.device, progress: bool = True
                     ) -> tuple[SmallClassifier, float]:
    """Trains on all but a held-out part of the real images; returns (model, held-out acc.)."""
    torch.manual_seed(seed)
    model = SmallClassifier(num_classes, input_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    train, held = holdout_split(len(images), holdout_fraction, seed)
    for epoch in tqdm(range(epochs), desc="classifier", unit="epoch", disable=not progress):
        model.train()
        order = torch.randperm(len(train), generator=seeded_generator(seed, CLASSIFIER_SEED,
                                                                      epoch))
        for start in range(0, len(train), batch_size):
            index = train[order[start:start + batch_size].numpy()]
            flip = images[index][:, :, ::-1] if epoch % 2 else images[index]
            batch = torch.from_numpy(np.ascontiguousarray(flip)).to(device)
            loss = F.cross_entropy(model(batch), torch.from_numpy(labels[index]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    accuracy = float((predict(model, images[held]) == labels[held]).mean())
    return model, accuracy


def save_classifier(model: SmallClassifier, path: str | Path, meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "num_classes": model.head.out_features, "input_size": model.input_size}
    tensors = {k: v.contiguous().cpu() for k, v in model.state_dict().items()}
    replace_file(path, lambda partial: save_file(tensors, str(partial),
                                                 metadata={"meta": json.dumps(meta)}))
    write_json_atomic(path.with_suffix(".json"), meta)


def load_classifier(path: str | Path, device: torch.device) -> tuple[SmallClassifier, dict]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["meta"])
    model = SmallClassifier(meta["num_classes"], meta["input_size"])
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval(), meta


def class_accuracy(model: SmallClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of samples the classifier assigns to the class they were drawn for."""
    return float((predict(model, images) == np.asarray(labels)).mean())


@torch.no_grad()
def reconstruction_accuracy(model: SmallClassifier, encoder, images: np.ndarray,
                            labels: np.ndarray, batch_size: int = 250) -> float:
    """The classifier's accuracy on ``encoder``'s reconstructions (decoded posterior means)
    of ``images``: what the autoencoder's latent space keeps of the classes."""
    decoded = []
    for start in range(0, len(images), batch_size):
        mean, _ = encoder.moments(torch.from_numpy(images[start:start + batch_size]))
        decoded.append(encoder.decode(mean * encoder.scale_factor).cpu().numpy())
    return class_accuracy(model, np.concatenate(decoded), labels)
