"""The ADM metric math, reference files, sample checks and both feature networks (offline)."""
from urllib.error import URLError

import numpy as np
import pytest
import torch
from scipy import linalg

from dice_core.metrics import (
    FID_WEIGHTS_FILE,
    FeatureNetworkError,
    FeatureSet,
    FIDInceptionV3,
    ReferenceMismatchError,
    SampleError,
    check_samples,
    compute_metrics,
    extract_features,
    frechet_distance,
    frechet_distance_to_features,
    inception_score,
    inception_score_from_probabilities,
    load_effnet_lite0,
    load_fid_inception,
    load_reference,
    precision_recall,
    save_reference,
    statistics,
    trace_sqrt_product,
)
from dice_core.metrics.adm import distance_rows, kth_neighbour_radii, squared_distances
from dice_core.metrics.network_io import resize_bilinear_tf1
from helpers import random_inception_weights

CAT_CLASSES = {281, 282, 283, 284, 285}
COFFEE_CLASSES = {504, 967, 968}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On two shared cores, OpenMP's spinning second thread makes small convolutions ~20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian_pair(dim=8, seed=0):
    """Two Gaussians sharing an eigenbasis: then tr sqrt(S1 S2) = sum sqrt(a_i b_i) exactly."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a, b = rng.uniform(0.5, 3.0, dim), rng.uniform(0.5, 3.0, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim) + 1.0
    sigma1, sigma2 = (basis * a) @ basis.T, (basis * b) @ basis.T
    closed_form = ((mu1 - mu2) @ (mu1 - mu2) + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum())
    return (mu1, sigma1), (mu2, sigma2), closed_form


def test_frechet_distance_of_sampled_gaussians_matches_the_closed_form():
    (mu1, sigma1), (mu2, sigma2), closed_form = gaussian_pair()
    rng = np.random.default_rng(1)
    x1 = rng.multivariate_normal(mu1, sigma1, size=20_000)
    x2 = rng.multivariate_normal(mu2, sigma2, size=20_000)
    sampled = frechet_distance(*statistics(x1), *statistics(x2))
    assert sampled == pytest.approx(closed_form, rel=0.01)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(closed_form, rel=1e-9)


def test_the_sample_space_route_equals_the_adm_route():
    rng = np.random.default_rng(2)
    reference = rng.standard_normal((400, 64)) @ rng.standard_normal((64, 64))
    samples = rng.standard_normal((40, 64)) + 0.3  # fewer samples than dimensions
    mu, sigma = statistics(reference)
    assert frechet_distance_to_features(mu, sigma, samples, "exact") == pytest.approx(
        frechet_distance(mu, sigma, *statistics(samples)), rel=1e-8)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(3)
    for features in (rng.standard_normal((600, 64)) * 2 + 5, rng.standard_normal((40, 64)) + 5):
        mu, sigma = statistics(features)
        scale = np.trace(sigma)
        assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * scale
        for route in ("adm", "exact"):
            assert abs(frechet_distance_to_features(mu, sigma, features, route)) < 1e-6 * scale


def trace_sqrt_of_rows(x, y):
    """tr sqrt(S1 S2) for the covariances of two sets of n rows, by another route than the
    code's: with A and B the centred rows, the eigenvalues of S1 S2 = A^T A B^T B / (n - 1)^2
    are the squared singular values of A B^T / (n - 1), so the trace is its nuclear norm."""
    a, b = x - x.mean(axis=0), y - y.mean(axis=0)
    return np.linalg.svd(a @ b.T, compute_uv=False).sum() / (len(x) - 1)


def test_500_samples_in_2048_dimensions_give_the_distance_of_an_independent_route():
    rng = np.random.default_rng(4)
    reference, samples = rng.random((500, 2048)), rng.random((500, 2048)) * 1.1
    # the exact route: ADM's would take a 2048 x 2048 square root (a minute or more here)
    metrics = compute_metrics(FeatureSet(pool=reference), FeatureSet(pool=samples), "inception",
                              fd_square_root="exact")
    gap = reference.mean(axis=0) - samples.mean(axis=0)
    traces = np.var(reference, axis=0, ddof=1).sum() + np.var(samples, axis=0, ddof=1).sum()
    expected = gap @ gap + traces - 2 * trace_sqrt_of_rows(reference, samples)
    assert metrics["fid"] == pytest.approx(expected, rel=1e-9)


def test_where_adm_would_raise_on_an_imaginary_part_the_square_root_stays_real():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 128)) * 1e3, rng.standard_normal((40, 128)) * 1e3
    (mu1, sigma1), (mu2, sigma2) = statistics(a), statistics(b)
    adm_root = linalg.sqrtm(sigma1 @ sigma2)
    assert np.abs(np.diagonal(adm_root).imag).max() > 1e-3  # ADM's evaluator raises here
    assert trace_sqrt_product(sigma1, sigma2) == pytest.approx(trace_sqrt_of_rows(a, b),
                                                               rel=1e-6)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
        frechet_distance_to_features(mu1, sigma1, b, "exact"), rel=1e-6)


def test_precision_and_recall_of_identical_and_of_far_apart_sets():
    rng = np.random.default_rng(5)
    features = rng.standard_normal((300, 32))
    assert precision_recall(features, features.copy(), batch_size=64) == (1.0, 1.0)
    assert precision_recall(features, features + 100.0, batch_size=64) == (0.0, 0.0)


def test_precision_counts_samples_inside_the_real_manifold_and_batching_does_not_matter():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((200, 16))
    fake = np.concatenate([real[:50] + 1e-3, rng.standard_normal((50, 16)) + 50.0])
    precision, recall = precision_recall(real, fake, batch_size=1000)
    assert precision == 0.5
    assert precision_recall(real, fake, batch_size=7) == (precision, recall)
    radii = kth_neighbour_radii(real, batch_size=13)
    assert precision_recall(real, fake, real_radii=radii) == (precision, recall)


def test_inception_score_of_one_hot_predictions_over_k_balanced_classes_is_k():
    k = 10
    one_hot = np.eye(k)[np.repeat(np.arange(k), 50)]
    assert inception_score_from_probabilities(one_hot) == pytest.approx(k, abs=1e-6)
    assert inception_score(one_hot * 100.0) == pytest.approx(k, abs=1e-6)
    assert inception_score(np.zeros((500, k))) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_averages_splits_of_5000():
    first = np.eye(4)[np.arange(5000) % 4]   # 4 classes in the first split
    second = np.eye(4)[np.arange(5000) % 2]  # 2 in the second
    assert inception_score_from_probabilities(np.concatenate([first, second])) == pytest.approx(3.0)


def test_metric_names_say_which_network_they_come_from():
    rng = np.random.default_rng(7)
    real = FeatureSet(pool=rng.random((60, 16)), spatial=rng.random((60, 20)))
    fake = FeatureSet(pool=rng.random((50, 16)), logits=rng.random((50, 10)),
                      spatial=rng.random((50, 20)))
    inception = compute_metrics(real, fake, "inception")
    assert set(inception) == {"feature_network", "num_samples", "fid", "sfid", "inception_score",
                              "precision", "recall", "fd_square_root", "pr_distances"}
    assert (inception["fd_square_root"], inception["pr_distances"]) == ("adm", "float16")
    assert inception["feature_network"] == "inception" and inception["num_samples"] == 50
    effnet = compute_metrics(real, fake, "effnet")
    assert set(effnet) == {"feature_network", "num_samples", "fd_effnet", "sfd_effnet",
                           "is_effnet", "precision_effnet", "recall_effnet", "fd_square_root",
                           "pr_distances"}
    assert (effnet["fd_square_root"], effnet["pr_distances"]) == ("exact", "float32")
    assert effnet["fd_effnet"] == pytest.approx(inception["fid"])


def test_reference_round_trip_and_refusal_of_another_setting(tmp_path):
    rng = np.random.default_rng(8)
    features = FeatureSet(pool=rng.random((120, 16)), spatial=rng.random((120, 12)))
    meta = {"network": "effnet", "resolution": 32, "source": "fashion-mnist", "encoder": "pixels"}
    path = tmp_path / "reference.npz"
    save_reference(path, features, meta)

    loaded, loaded_meta = load_reference(path, expected=meta)
    assert loaded_meta == {**meta, "count": 120}
    for ours, theirs in zip(features.pool_statistics() + features.spatial_statistics(),
                            loaded.pool_statistics() + loaded.spatial_statistics()):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(loaded.pool, features.pool)

    with pytest.raises(ReferenceMismatchError, match="resolution=32.*resolution=256"):
        load_reference(path, expected={**meta, "resolution": 256})
    with pytest.raises(ReferenceMismatchError, match="'vae'"):
        load_reference(path, expected={"encoder": "vae"})
    with pytest.raises(ReferenceMismatchError, match="does not record 'split'"):
        load_reference(path, expected={"split": "train"})


def test_a_reference_keeps_at_most_10k_features_spread_over_the_set(tmp_path):
    pool = np.arange(12_000, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    path = tmp_path / "reference.npz"
    save_reference(path, FeatureSet(pool=pool), {"network": "effnet"})
    loaded, meta = load_reference(path, expected={})
    assert loaded.pool.shape == (10_000, 2) and meta["count"] == 12_000
    assert loaded.pool[0, 0] == 0 and loaded.pool[-1, 0] == 11_999


def test_an_adm_reference_batch_loads_as_an_inception_reference(tmp_path):
    rng = np.random.default_rng(9)
    path = tmp_path / "VIRTUAL_tiny.npz"
    np.savez(path, mu=rng.random(8), sigma=np.eye(8), mu_s=rng.random(4), sigma_s=np.eye(4),
             arr_0=np.zeros((3, 32, 32, 3), np.uint8))
    features, meta = load_reference(path, expected={"network": "inception", "resolution": 32})
    assert meta["origin"] == "adm-reference-batch"
    assert features.pool is None and features.spatial_statistics()[0].shape == (4,)
    with pytest.raises(ReferenceMismatchError, match="network"):
        load_reference(path, expected={"network": "effnet"})


IMAGENET = {"name": "imagenet", "root": "/data/imagenet", "num_classes": 1000,
            "split_sizes": {"train": 1_281_167}}


def adm_batch(path, resolution=32, images=True):
    rng = np.random.default_rng(9)
    arrays = {"mu": rng.random(8), "sigma": np.eye(8), "mu_s": rng.random(4), "sigma_s": np.eye(4)}
    if images:
        arrays["arr_0"] = np.zeros((3, resolution, resolution, 3), np.uint8)
    np.savez(path, **arrays)
    return path


def test_an_adm_batch_fits_imagenet_at_its_resolution_whatever_the_encoder(tmp_path):
    path = adm_batch(tmp_path / "VIRTUAL_imagenet32_labeled.npz")
    for encoder in ("vae:sd-vae-ft-ema", "pixels"):
        _, meta = load_reference(path, {"network": "inception", "resolution": 32,
                                        "source": IMAGENET, "encoder": encoder})
    assert meta["source"] == {"name": "imagenet"} and meta["resolution"] == 32
    without_images = adm_batch(tmp_path / "VIRTUAL_imagenet64.npz", images=False)
    _, meta = load_reference(without_images, {"network": "inception", "resolution": 64,
                                              "source": IMAGENET, "encoder": "pixels"})
    assert meta["resolution"] == 64   # from its name


def test_an_adm_batch_is_refused_for_other_data_or_resolution_saying_what_to_do(tmp_path):
    path = adm_batch(tmp_path / "VIRTUAL_imagenet32_labeled.npz")
    fashion = {"network": "inception", "resolution": 32, "source": {"name": "fashion-mnist"},
               "encoder": "vae:autoencoder"}
    for expected in (fashion, {**fashion, "source": IMAGENET, "resolution": 64},
                     {**fashion, "source": IMAGENET, "network": "effnet"}):
        with pytest.raises(ReferenceMismatchError,
                           match=r"made for ImageNet at 32x32 .*dvc repro reference"):
            load_reference(path, expected)
    renamed = adm_batch(tmp_path / "reference.npz")
    with pytest.raises(ReferenceMismatchError, match="file name does not name"):
        load_reference(renamed, {**fashion, "source": IMAGENET})


def test_without_reference_features_the_metrics_say_precision_and_recall_were_not_computed():
    rng = np.random.default_rng(11)
    real = FeatureSet(mu=np.zeros(16), sigma=np.eye(16))
    metrics = compute_metrics(real, FeatureSet(pool=rng.random((40, 16))), "inception")
    assert "precision" not in metrics and "recall" not in metrics
    assert "dice reference --reference-batch" in metrics["precision_recall_skipped"]


def test_the_reported_fid_takes_adms_eps_retry_where_the_first_square_root_is_not_finite(
        monkeypatch):
    """Older scipy gave NaN for the square root of a singular product (fewer samples than
    dimensions), and ADM then retries with eps on the diagonals: made so here."""
    rng = np.random.default_rng(10)
    reference, samples = rng.standard_normal((200, 32)), rng.standard_normal((12, 32)) + 0.2
    sqrtm, singular = linalg.sqrtm, []

    def nan_where_singular(matrix, *args, **kwargs):
        singular.append(np.linalg.matrix_rank(matrix) < len(matrix))
        return np.full_like(matrix, np.nan) if singular[-1] else sqrtm(matrix, *args, **kwargs)

    monkeypatch.setattr(linalg, "sqrtm", nan_where_singular)
    real = FeatureSet(pool=reference)
    adm = frechet_distance(*real.pool_statistics(), *statistics(samples))
    assert singular == [True, False]   # the first root failed, the retry did not
    fid = compute_metrics(real, FeatureSet(pool=samples), "inception")["fid"]
    assert fid == adm
    exact = frechet_distance_to_features(*real.pool_statistics(), samples, "exact")
    assert abs(fid - exact) > 1e-4 * fid   # the retry is seen: the eps moved the distance


def numpy_float16_distances(u, v):
    """ADM's float16 DistanceBlock written in NumPy: float16 inputs, every result rounded to
    float16 with products summed in float32 (as a GPU's), float32 where any is not finite."""
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is what this looks for
        norms_u = (u16 * u16).astype(np.float32).sum(axis=1).astype(np.float16)[:, None]
        norms_v = (v16 * v16).astype(np.float32).sum(axis=1).astype(np.float16)[None, :]
        products = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
        block = np.maximum(norms_u - np.float16(2) * products + norms_v, np.float16(0))
    if np.isfinite(block).all():
        return block.astype(np.float32)
    u32, v32 = u.astype(np.float32), v.astype(np.float32)
    return np.maximum((u32 * u32).sum(axis=1)[:, None] - 2 * u32 @ v32.T
                      + (v32 * v32).sum(axis=1)[None, :], 0)


def numpy_float16_precision_recall(real, fake, k=3):
    def radii(features):
        return np.partition(numpy_float16_distances(features, features), k, axis=1)[:, k]
    distances = numpy_float16_distances(real, fake)
    precision = (distances <= radii(real)[:, None]).any(axis=0).mean()
    recall = (distances <= radii(fake)[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def quantised_features(rng, count, dim=24, shift=0):
    """Multiples of 1/8: float32 sums of their products are exact in any order, so float16
    rounding is the only rounding and two implementations must agree to the bit."""
    return (rng.integers(0, 48, (count, dim)) + shift) / 8


def test_float16_precision_recall_equal_an_independent_float16_computation():
    rng = np.random.default_rng(12)
    real, fake = quantised_features(rng, 80), quantised_features(rng, 60, shift=3)
    torch_distances = torch.cat([block for _, block in distance_rows(
        torch.tensor(real, dtype=torch.float32), torch.tensor(fake, dtype=torch.float32),
        "float16")])
    np.testing.assert_array_equal(torch_distances.numpy(), numpy_float16_distances(real, fake))
    assert (torch_distances != squared_distances(torch.tensor(real, dtype=torch.float32),
                                                 torch.tensor(fake, dtype=torch.float32))).any()
    adm = numpy_float16_precision_recall(real, fake)
    assert precision_recall(real, fake, distances="float16") == adm
    assert precision_recall(real, fake, distances="float16", batch_size=16) == adm
    assert compute_metrics(FeatureSet(pool=real), FeatureSet(pool=fake), "inception")[
        "precision"] == adm[0]


def test_float16_distances_fall_back_to_float32_block_by_block_as_adm():
    rng = np.random.default_rng(13)
    features = quantised_features(rng, 8)
    features[5] *= 100   # |x|^2 beyond float16's 65504: its blocks overflow
    tensor = torch.tensor(features, dtype=torch.float32)
    ours = torch.cat([block for _, block in distance_rows(tensor, tensor, "float16",
                                                          batch_size=4)]).numpy()
    blocks = [slice(0, 4), slice(4, 8)]
    adm = np.block([[numpy_float16_distances(features[r], features[c]) for c in blocks]
                    for r in blocks])
    np.testing.assert_array_equal(ours, adm)
    float32 = squared_distances(tensor, tensor).numpy()
    assert (ours[:4, :4] != float32[:4, :4]).any()          # float16 where nothing overflows
    np.testing.assert_array_equal(ours[:, 4:], float32[:, 4:])   # float32 where it does


def test_check_samples_counts_non_finite_samples_and_refuses_bad_arrays():
    images = np.zeros((10, 8, 8, 3), np.float32)
    images[2, 0, 0, 0] = np.nan
    images[5, 3, 3, 1] = np.inf
    images[9] = np.nan
    with pytest.raises(SampleError, match="3 of 10 samples"):
        check_samples(images)
    with pytest.raises(SampleError, match="dtype int32"):
        check_samples(np.zeros((2, 8, 8, 3), np.int32))
    with pytest.raises(SampleError, match="shape"):
        check_samples(np.zeros((2, 3, 8, 8), np.uint8))
    check_samples(np.zeros((2, 8, 8, 1), np.uint8))


def test_tf1_bilinear_resize_samples_at_i_times_in_over_out():
    x = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]])
    expected_row = torch.tensor([0.0, 2.0, 4.0, 4.0])
    out = resize_bilinear_tf1(x, 4)
    torch.testing.assert_close(out[0, 0, 0], expected_row)
    torch.testing.assert_close(out[0, 0, :, 0], expected_row * 2)
    y = torch.rand(1, 3, 17, 17)
    assert torch.equal(resize_bilinear_tf1(y, 17), y)


def test_inception_loads_a_standard_state_dict_strictly_and_gives_adm_shapes(tmp_path):
    path = tmp_path / FID_WEIGHTS_FILE
    original = random_inception_weights(path)
    network = load_fid_inception(path)
    shapes = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_6d.branch1x1.conv.weight"] == (192, 768, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    # torchvision's Inception3 has 27,161,264 parameters; less AuxLogits (3,326,696), plus the
    # 8 extra classes of the 1008-way fc (16,392): the FID graph's 23,850,960.
    assert sum(p.numel() for p in network.parameters()) == 23_850_960

    captured = {}
    network.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: captured.update(out=out))
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    features = extract_features(network, images)
    assert features.pool.shape == (2, 2048)
    assert features.logits.shape == (2, 1008)
    assert features.spatial.shape == (2, 17 * 17 * 7)
    np.testing.assert_allclose(features.logits, features.pool @ network.fc.weight.numpy().T,
                               rtol=1e-5, atol=1e-5)  # ADM's softmax input has no bias
    nhwc_first_7 = captured["out"][:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    np.testing.assert_array_equal(features.spatial, nhwc_first_7.numpy())
    with torch.no_grad():
        np.testing.assert_array_equal(original(torch.from_numpy(images)).pool, features.pool)


def test_inception_refuses_a_state_dict_with_missing_keys(tmp_path):
    state = FIDInceptionV3().state_dict()
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(FeatureNetworkError, match="Mixed_7c.branch_pool.conv.weight"):
        load_fid_inception(tmp_path / "partial.pth")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache under tmp_path, and downloads that fail as without a network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert torch.hub.get_dir().startswith(str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_inception_without_weights_offline_says_how_to_provide_them(offline_hub):
    with pytest.raises(FeatureNetworkError) as error:
        load_fid_inception()
    message = str(error.value)
    assert "evaluate.inception_weights" in message
    assert str(offline_hub / FID_WEIGHTS_FILE) in message
    assert "network access" in message and "github.com/mseitzer/pytorch-fid" in message
    with pytest.raises(FeatureNetworkError, match="no file at"):
        load_fid_inception(offline_hub / "absent.pth")


def test_inception_weights_in_the_hub_cache_load_without_a_network(offline_hub):
    offline_hub.mkdir(parents=True)
    random_inception_weights(offline_hub / FID_WEIGHTS_FILE)
    assert load_fid_inception().fc.weight.shape == (1008, 2048)


@pytest.mark.parametrize("name, classes", [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)])
def test_efficientnet_lite0_recognises_a_cat_and_a_coffee_cup(name, classes):
    from skimage import data
    network = load_effnet_lite0()
    features = extract_features(network, getattr(data, name)()[None])
    assert features.pool.shape == (1, 1280) and features.spatial.shape == (1, 14 * 14 * 10)
    top5 = np.argsort(features.logits[0])[::-1][:5]
    assert top5[0] in classes, f"top-5 ImageNet classes {top5.tolist()}"


def test_efficientnet_lite0_takes_grey_images():
    network = load_effnet_lite0()
    grey = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
    features = extract_features(network, grey)
    rgb = extract_features(network, np.repeat(grey, 3, axis=-1))
    np.testing.assert_allclose(features.pool, rgb.pool, rtol=1e-5, atol=1e-6)
