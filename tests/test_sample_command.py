"""`dice sample`: images of chosen classes from trained or imported weights, and the data those
weights record, which sampling, evaluation and fine-tuning check."""
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dice_core.config import Params, TrainingJob
from dice_core.data import read_manifest, seal_manifest
from dice_core.data.class_names import class_ids, find_class_index, read_class_index
from dice_core.data.fashion_mnist import CLASS_NAMES
from dice_core.errors import InputError
from dice_core.models.provenance import data_identity
from dice_core.models.serialization import load_model, read_trained_on, save_model
from dice_core.training import ema_weights_path, train_model
from helpers import save_tiny_vae, training_params
from pipelines.cli import main as dice_main
from test_dit_import import official_state_dict


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_shards, _mlflow_server_process):
    """dit-t after 3 steps on 8x8 shapes of 2 classes (circle, square), and its params file."""
    root = tmp_path_factory.mktemp("sample")
    raw = training_params(root, tiny_shards, _mlflow_server_process.start().uri, steps=3,
                          ckpt_every=3)
    raw["evaluate"].update(device="cpu", steps=2, batch_size=4, output=str(root / "eval"))
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    train_model(TrainingJob.of(Params.model_validate(raw)), "dit-t")
    return params_file, ema_weights_path(root / "runs" / "dit-t")


def sample(params_file, out, *flags):
    return dice_main(["sample", "--params", str(params_file), "--model", "dit-t",
                      "--out", str(out), *flags])


def test_sample_writes_a_grid_of_one_row_per_class_and_the_adm_npz(trained, tmp_path):
    params_file, weights = trained
    assert read_trained_on(weights) == data_identity(read_manifest(
        yaml.safe_load(params_file.read_text())["train"]["data"]))
    assert sample(params_file, tmp_path / "a", "--classes", "1", "circle", "--per-class", "4",
                  "--cfg", "3", "--batch-size", "3") == 0
    with np.load(tmp_path / "a" / "samples.npz") as written:
        images, labels = written["arr_0"], written["arr_1"]
    assert images.shape == (8, 8, 8, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and list(labels) == [1, 1, 1, 1, 0, 0, 0, 0]
    grid = np.asarray(Image.open(tmp_path / "a" / "grid.png"))
    assert grid.shape == (2 * 10 + 2, 4 * 10 + 2, 3)          # 2 rows of 4, 2 px gaps
    np.testing.assert_array_equal(grid[12:20, 2:10], images[4])   # row 2: the circles
    np.testing.assert_array_equal(grid[2:10, 32:40], images[3])
    assert sample(params_file, tmp_path / "b", "--classes", "square", "0", "--per-class", "4",
                  "--cfg", "3", "--batch-size", "5") == 0
    for name in ("samples.npz", "grid.png"):   # the same bytes, whatever the batch size
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert sample(params_file, tmp_path / "c", "--classes", "1", "0", "--per-class", "4",
                  "--batch-size", "3") == 0
    with np.load(tmp_path / "c" / "samples.npz") as unguided:
        assert not np.array_equal(unguided["arr_0"], images)   # --cfg 3 guided the others


def other_data(weights, path, **changes):
    model = load_model(weights)
    model.trained_on = {**model.trained_on, **changes}
    save_model(model, path)
    return path


@pytest.mark.parametrize("flags, message", [
    (["--classes", "hexagon"], "unknown class 'hexagon': give ids 0-1 or the data's class names "
                               "(circle, square)"),
    (["--classes", "0", "2"], "unknown class 2: the data's class ids are 0-1"),
    (["--cfg", "-1"], "the guidance scale must be a number >= 0 (1 = no guidance), got -1.0"),
    (["--model", "dice-t"], "holds weights of dit-t, not of dice-t"),
    (["--checkpoint", "OTHER"], "was trained on other data than"),
])
def test_a_bad_class_scale_preset_or_data_stops_naming_it(trained, tmp_path, capsys, flags,
                                                          message):
    params_file, weights = trained
    if "OTHER" in flags:
        flags[flags.index("OTHER")] = str(other_data(weights, tmp_path / "o.safetensors",
                                                     source="fashion-mnist"))
        message += " " + str(yaml.safe_load(params_file.read_text())["train"]["data"]) + \
            ": source 'fashion-mnist' (the data's: 'shapes')"
    elif "--model" in flags:
        flags += ["--checkpoint", str(weights)]
    assert sample(params_file, tmp_path / "out", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "samples.npz").exists()


def test_weights_that_record_no_data_are_taken_with_a_warning(trained, tmp_path, capsys):
    params_file, weights = trained
    model = load_model(weights)
    model.trained_on = None      # as written before weights recorded their data
    save_model(model, tmp_path / "old.safetensors")
    assert sample(params_file, tmp_path / "out", "--checkpoint", str(tmp_path / "old.safetensors"),
                  "--classes", "0", "--per-class", "1") == 0
    assert "does not record the data it was trained on" in capsys.readouterr().err


def test_training_starts_from_init_weights_that_fit_and_refuses_others(trained, tmp_path,
                                                                       tiny_shards,
                                                                       _mlflow_server_process):
    params_file, weights = trained
    uri = _mlflow_server_process.start().uri

    def job(init_weights, folder):
        raw = training_params(tmp_path / folder, tiny_shards, uri, steps=1, ckpt_every=1,
                              lr=1e-12, ema_warmup=True)
        raw["train"]["per_model"]["dit-t"] = {"init_weights": str(init_weights)}
        return TrainingJob.of(Params.model_validate(raw))

    train_model(job(weights, "fine-tune"), "dit-t")
    tuned = load_model(ema_weights_path(tmp_path / "fine-tune" / "runs" / "dit-t"))
    start = load_model(weights)
    for (name, after), before in zip(tuned.state_dict().items(), start.state_dict().values()):
        torch.testing.assert_close(after, before, rtol=0, atol=1e-8, msg=name)
    other = other_data(weights, tmp_path / "other.safetensors", latent_shape=[4, 8, 8])
    with pytest.raises(InputError, match=r"latent_shape \[4, 8, 8\] \(the data's: \[3, 8, 8\]\)"):
        train_model(job(other, "refused"), "dit-t")


def imagenet_like(tmp_path, tiny_shards):
    """The shards' manifest as if ImageNet (1000 wnids, a class index beside it) had been
    encoded by a pretrained autoencoder of the SD-VAE's scale factor: what an imported DiT needs.
    The tiny VAE turns DiT's 8x8x4 latents into 16x16 images."""
    latents = tmp_path / "latents"
    shutil.copytree(tiny_shards, latents)
    manifest = json.loads((latents / "manifest.json").read_text())
    wnids = [f"n{index:08d}" for index in range(1000)]
    manifest.update(source={"name": "imagenet", "root": str(tmp_path)}, resolution=64,
                    latent_shape=[4, 8, 8], encoder="vae:tiny", encoder_identity=None,
                    encoder_source=str(save_tiny_vae(tmp_path / "vae")), scale_factor=0.18215,
                    num_classes=1000, class_names=wnids)
    (latents / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "n00000000 tench, Tinca tinca\nn00000001 goldfish\nn00000005 crane\nn00000009 crane\n")
    return latents


def test_imported_dit_weights_sample_imagenet_classes_by_name(trained, tmp_path, tiny_shards):
    params_file, _ = trained
    raw = yaml.safe_load(params_file.read_text())
    raw["train"]["data"] = str(imagenet_like(tmp_path, tiny_shards))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    torch.save(official_state_dict(), tmp_path / "dit.pt")
    imported = tmp_path / "dit.safetensors"
    assert dice_main(["import", str(tmp_path / "dit.pt"), "--model", "dit-t"]) == 0
    assert sample(params_file, tmp_path / "out", "--checkpoint", str(imported), "--classes",
                  "Tinca tinca", "n00000001", "7", "--per-class", "1", "--cfg", "1.5",
                  "--guidance-channels", "3") == 0
    with np.load(tmp_path / "out" / "samples.npz") as written:
        assert written["arr_0"].shape == (3, 16, 16, 3) and list(written["arr_1"]) == [0, 1, 7]


def test_class_names_ids_and_aliases(tmp_path):
    assert class_ids(["ankle BOOT", "T-shirt/top", "3"], CLASS_NAMES) == [9, 0, 3]
    index = tmp_path / "LOC_synset_mapping.txt"
    index.write_text("n01 tench, Tinca tinca\nn02 crane\nn03 crane\n")
    keras = tmp_path / "imagenet_class_index.json"
    keras.write_text(json.dumps({"0": ["n01", "tench"], "1": ["n02", "great_white_shark"]}))
    assert read_class_index(keras) == {"n01": ["tench"], "n02": ["great white shark"]}
    aliases = read_class_index(index)
    assert class_ids(["tinca TINCA", "n03"], ["n01", "n02", "n03"], aliases) == [0, 2]
    with pytest.raises(InputError, match=r"'crane' is ambiguous \(classes \[1, 2\]\)"):
        class_ids(["crane"], ["n01", "n02", "n03"], aliases)
    assert find_class_index({"source": {"name": "imagenet", "root": str(tmp_path)}}) == index
    assert find_class_index({"source": {"name": "fashion-mnist"}}) is None
