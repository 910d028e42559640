"""The training loader: deterministic batches, exact resume, disjoint shards per rank."""
import itertools

import numpy as np
import pytest
import torch

from dice_core.data import (
    DataError,
    LatentShards,
    Shapes,
    VAEEncoder,
    encode_dataset,
    make_loader,
    prepare_dataset,
    read_manifest,
    read_shard,
    seal_manifest,
)
from helpers import save_tiny_vae


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    """8 shards of 6 stochastic latents (a tiny random VAE) from 48 coloured shapes."""
    root = tmp_path_factory.mktemp("loader")
    save_tiny_vae(root / "vae")
    source = Shapes(num_classes=4, image_size=16, count_per_class={"train": 12}, seed=3)
    prepare_dataset(source, root / "prepared", splits=["train"], resolution=16, shard_size=6,
                    progress=False)
    encode_dataset(VAEEncoder(str(root / "vae")), root / "prepared", root / "latents",
                   batch_size=16, progress=False)
    return root / "latents"


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def same_batches(first, second):
    return all(a.index == b.index and a.keys == b.keys and torch.equal(a.latents, b.latents)
               and torch.equal(a.labels, b.labels) for a, b in zip(first, second, strict=True))


def test_batches_depend_on_the_seed_only(latents):
    first = take(make_loader(latents, batch_size=5, seed=7), 12)
    second = take(make_loader(latents, batch_size=5, seed=7), 12)
    other = take(make_loader(latents, batch_size=5, seed=8), 12)
    assert same_batches(first, second)
    assert [b.index for b in first] == list(range(12))
    assert first[0].latents.shape == (5, 4, 8, 8) and first[0].labels.dtype == torch.int64
    assert not any(torch.equal(a.latents, b.latents) for a, b in zip(first, other))
    assert [a.keys for a in first] != [b.keys for b in other]


def test_latents_are_scaled_samples_of_the_stored_moments(latents):
    """Each latent is (mean + std * eps) * 0.18215 of the image or its mirror: within a few
    standard deviations of one of the two means, and different from both."""
    from dice_core.data import read_shard
    manifest = read_manifest(latents)
    moments = {key: m["moments"] for record in manifest["shards"]
               for key, _, m in read_shard(latents / record["name"], record)}
    batch = next(make_loader(latents, batch_size=12, seed=0))
    views = []
    for key, latent in zip(batch.keys, batch.latents):
        stored = torch.from_numpy(moments[key])
        z = [(latent / 0.18215 - stored[v, 0]) / torch.exp(0.5 * stored[v, 1]) for v in (0, 1)]
        view = int(z[1].abs().max() < z[0].abs().max())
        assert z[view].abs().max() < 6 and z[view].abs().max() > 0.1
        views.append(view)
    assert 0 < sum(views) < len(views)  # both images and mirrors are drawn


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_resumed_at_step_k_gives_the_same_batches(latents, workers):
    uninterrupted = take(make_loader(latents, batch_size=4, seed=1, num_workers=workers), 30)
    for k in (1, 7, 13, 25):
        resumed = take(make_loader(latents, batch_size=4, seed=1, num_workers=workers,
                                   start_batch=k), 30 - k)
        assert same_batches(resumed, uninterrupted[k:]), k


def test_two_ranks_read_disjoint_shards_that_cover_the_set(latents):
    manifest = read_manifest(latents)
    ranks = [LatentShards(latents, batch_size=6, seed=4, rank=r, world_size=2) for r in (0, 1)]
    for epoch in range(3):
        shards = [set(rank.lane_shards(epoch, lane=r)) for r, rank in enumerate(ranks)]
        assert not shards[0] & shards[1]
        assert shards[0] | shards[1] == set(range(len(manifest["shards"])))
    # one epoch of each rank's batches holds every sample exactly once
    keys = [key for r in (0, 1)
            for batch in take(make_loader(latents, batch_size=6, seed=4, rank=r,
                                          world_size=2), 4)
            for key in batch.keys]
    assert len(keys) == len(set(keys)) == 48
    # and the two ranks draw different noise
    first = [next(make_loader(latents, batch_size=6, seed=4, rank=r, world_size=2))
             for r in (0, 1)]
    assert not torch.equal(first[0].latents, first[1].latents)


def test_epochs_follow_each_other_with_a_new_order(latents):
    batches = take(make_loader(latents, batch_size=8, seed=5), 12)   # two epochs of 48
    epochs = [[k for b in batches[i:i + 6] for k in b.keys] for i in (0, 6)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == 48
    assert epochs[0] != epochs[1]


# 8 shards over 3 epochs: kept after the first, or read again in each (where an epoch begins
# with the shard the last one ended on, the shard in hand serves)
@pytest.mark.parametrize("budget, reads", [(2**30, {8}), (0, {22, 23, 24})])
def test_shards_that_fit_are_read_once_and_the_batches_stay_the_same(latents, monkeypatch,
                                                                     budget, reads):
    import dice_core.data.loader as loader
    expected = take(make_loader(latents, batch_size=4, seed=1), 36)   # 3 epochs of 48
    opened = []
    monkeypatch.setattr(loader, "SHARD_CACHE_BYTES", budget)
    monkeypatch.setattr(loader, "read_shard",
                        lambda path, record: opened.append(path) or read_shard(path, record))
    assert same_batches(take(make_loader(latents, batch_size=4, seed=1), 36), expected)
    assert len(opened) in reads


def edited_copy(latents, folder, edit, seal=False):
    import json
    import shutil
    shutil.copytree(latents, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(seal_manifest(manifest) if seal
                                                     else manifest))
    return folder


@pytest.mark.parametrize("edit", [
    lambda m: m.update(num_classes=3),                      # 4 classes written
    lambda m: m["shards"].pop(),                            # a shard's record deleted
    lambda m: m.update(latent_shape=[4, 16, 16])])          # 4x8x8 written
def test_a_manifest_edited_after_its_stage_wrote_it_is_refused_naming_the_stage(
        latents, tmp_path, edit):
    edited = edited_copy(latents, tmp_path / "edited", edit)
    with pytest.raises(DataError, match=r"manifest.json is not as `dvc repro encode` wrote it"):
        make_loader(edited, batch_size=4, seed=0)


def test_a_label_outside_the_manifests_classes_stops_the_loader_naming_the_shard(latents,
                                                                                 tmp_path):
    # what a writer that miscounted would leave: a sealed manifest of 3 classes, labels 0-3
    edited = edited_copy(latents, tmp_path / "edited", lambda m: m.update(num_classes=3),
                         seal=True)
    with pytest.raises(DataError, match=r"shard-\d+\.tar holds label 3, outside the "
                                        r"manifest's 3 classes"):
        take(make_loader(edited, batch_size=48, seed=0), 1)


def test_too_many_lanes_for_the_shards_is_refused(latents):
    with pytest.raises(DataError, match=r"8 'train' shards cannot feed 3 ranks x 3 loader "
                                        r"workers"):
        LatentShards(latents, batch_size=4, seed=0, world_size=3, num_workers=3)


def test_a_truncated_shard_stops_the_loader_with_a_clear_error(latents, tmp_path):
    import shutil
    copy = tmp_path / "latents"
    shutil.copytree(latents, copy)
    manifest = read_manifest(copy)
    victim = copy / manifest["shards"][0]["name"]
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2] + bytes(len(data) - len(data) // 2))  # same size
    with pytest.raises(DataError, match="truncated or changed"):
        take(make_loader(copy, batch_size=8, seed=0), 6)


def test_the_loader_refuses_image_shards_and_missing_folders(latents, tmp_path):
    with pytest.raises(DataError, match="does not hold latents"):
        LatentShards(latents.parent / "prepared", batch_size=4, seed=0)
    with pytest.raises(DataError, match="manifest.json not found"):
        LatentShards(tmp_path / "nothing", batch_size=4, seed=0)


def test_pixel_latents_are_the_images_exactly(tmp_path):
    """A deterministic encoder has no variance to sample: a latent is its stored mean."""
    from dice_core.data import PixelEncoder
    source = Shapes(num_classes=2, image_size=8, count_per_class={"train": 2}, seed=0)
    prepare_dataset(source, tmp_path / "p", splits=["train"], resolution=8, shard_size=4,
                    progress=False)
    encode_dataset(PixelEncoder(), tmp_path / "p", tmp_path / "l", batch_size=4, progress=False)
    batch = next(make_loader(tmp_path / "l", batch_size=4, seed=0))
    images = {item.key: np.asarray(source.draw("train", i, item.label))
              for i, item in enumerate(source.items("train"))}
    for key, latent in zip(batch.keys, batch.latents):
        expected = torch.from_numpy(images[key]).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.equal(latent, expected) or torch.equal(latent, expected.flip(-1))
