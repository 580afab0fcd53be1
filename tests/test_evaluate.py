"""Evaluation metrics against closed forms: Fréchet distance of Gaussians, unbiased KID, IS extremes,
the FID Inception weights format, the digits FID, and toy metrics against exact mixtures."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from oracles import F64, mixture, random_spd
from torch import nn

from scorelib import evaluate as ev
from scorelib.metrics import digits as digits_mod
from scorelib.metrics.fid import _mmd2_unbiased_poly
from scorelib.metrics.inception import _read_state_dict, _tf_avg_pool


def psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root by eigendecomposition."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# --- Fréchet distance -------------------------------------------------------------------------


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert ev.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)
    assert ev.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method="eigh") == pytest.approx(want, rel=1e-10)


def test_frechet_distance_non_commuting_against_eigendecomposition():
    g = torch.Generator().manual_seed(1)
    s1, s2 = random_spd(5, g).numpy(), random_spd(5, g, scale=2.0).numpy()
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.arange(5.0), np.ones(5)
    r1 = psd_sqrt(s1)  # Tr (Σ₁Σ₂)^{1/2} = Tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(psd_sqrt(r1 @ s2 @ r1))
    assert ev.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
    assert ev.frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="method"):
        ev.frechet_distance(mu1, s1, mu2, s2, method="svd")


def test_fid_of_a_set_with_itself_is_zero_and_accepts_torch():
    f = torch.randn(400, 16, generator=torch.Generator().manual_seed(2)) @ torch.randn(16, 16)
    assert abs(ev.fid_from_features(f, f)) < 1e-6
    mu, sigma = ev.feature_statistics(f)
    assert mu.dtype == np.float64 and mu.shape == (16,) and sigma.shape == (16, 16)
    np.testing.assert_allclose(sigma, np.cov(f.double().numpy(), rowvar=False), rtol=1e-12)


def test_frechet_distance_singular_covariances_stay_finite():
    f = np.random.default_rng(3).normal(size=(6, 20))  # 6 samples in 20-D: covariance of rank 5
    d = ev.fid_from_features(f, f)
    assert np.isfinite(d) and abs(d) < 1e-3
    mu, sigma = ev.feature_statistics(f)
    assert abs(ev.frechet_distance(mu, sigma, mu, sigma, method="eigh")) < 1e-6
    with pytest.raises(ValueError, match="shape"):
        ev.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_cached_statistics_compute_reuse_and_recover(tmp_path):
    path = tmp_path / "sub" / "ref.npz"
    f = np.random.default_rng(4).normal(size=(50, 3))
    mu, sigma = ev.cached_statistics(path, lambda: f)
    assert path.is_file()

    def fail():
        raise AssertionError("recomputed although cached")

    mu2, sigma2 = ev.cached_statistics(path, fail)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    path.write_bytes(b"PK\x03\x04 truncated")  # a corrupt cache is recomputed and rewritten
    mu3, _ = ev.cached_statistics(path, lambda: f + 1)
    np.testing.assert_allclose(mu3, mu + 1)
    np.testing.assert_allclose(ev.load_statistics(path)[0], mu + 1)
    np.savez(path, mu=np.zeros(2), sigma=np.eye(3))  # inconsistent shapes: recomputed too
    assert ev.cached_statistics(path, lambda: f)[0].shape == (3,)
    with pytest.raises(ValueError, match=str(tmp_path / "missing.npz")):
        ev.load_statistics(tmp_path / "missing.npz")


# --- reference statistics files -----------------------------------------------------------------


def _features(n: int, d: int = 6, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + shift


def test_pytorch_fid_format_round_trip_and_fid_equals_fid_from_features(tmp_path):
    real, fake = _features(80, seed=1), _features(70, seed=2, shift=0.3)
    path = tmp_path / "ref.npz"
    ev.save_statistics(path, *ev.feature_statistics(real))
    with np.load(path) as f:  # exactly pytorch-fid's keys (fid_score.py reads f["mu"], f["sigma"])
        assert sorted(f.files) == ["mu", "sigma"]
    assert ev.statistics_format(path) == "pytorch-fid"
    ref = ev.read_statistics(path)
    assert ref.features is None and ref.count is None and ref.format == "pytorch-fid"
    mu, sigma = ev.feature_statistics(real)
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma, sigma)
    from_file = ev.frechet_distance(*ev.feature_statistics(fake), ref.mu, ref.sigma)
    assert from_file == pytest.approx(ev.fid_from_features(fake, real), rel=1e-12)
    assert from_file > 0.05  # the shift is seen


def test_score_sde_pool3_format(tmp_path):
    real = _features(90, seed=3).astype(np.float32)
    path = tmp_path / "cifar10_stats.npz"
    np.savez_compressed(path, pool_3=real)  # score_sde_pytorch run_lib.py fid_stats writes exactly this
    assert ev.statistics_format(path) == "score_sde"
    ref = ev.read_statistics(path)
    assert ref.format == "score_sde" and ref.count == 90 and ref.features.shape == (90, 6)
    mu, sigma = ev.feature_statistics(real)
    np.testing.assert_allclose(ref.mu, mu, rtol=1e-12)
    np.testing.assert_allclose(ref.sigma, sigma, rtol=1e-12)
    np.testing.assert_allclose(ref.sigma, np.cov(real.astype(np.float64), rowvar=False), rtol=1e-12)  # ddof = 1


def test_adm_reference_batch_with_statistics_and_with_images_only(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)  # NHWC, as ADM's reference batches
    mu, sigma = rng.normal(size=4), random_spd(4, torch.Generator().manual_seed(0)).numpy()
    with_stats = tmp_path / "VIRTUAL_with_stats.npz"
    np.savez(with_stats, arr_0=images, mu=mu, sigma=sigma, mu_s=mu[:2], sigma_s=sigma[:2, :2])
    assert ev.statistics_format(with_stats) == "adm"
    ref = ev.read_statistics(with_stats, lambda imgs: pytest.fail("mu/sigma present: no network needed"))
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma, sigma)
    assert ref.format == "adm" and ref.features is None

    images_only = tmp_path / "VIRTUAL_images.npz"
    np.savez(images_only, arr_0=images)
    seen = []

    def per_channel_means(x):  # a stand-in feature network: NCHW uint8 in, [N, 3] out
        seen.append((x.shape, x.dtype))
        return x.double().mean(dim=(2, 3))

    ref = ev.read_statistics(images_only, per_channel_means)
    assert seen == [((7, 3, 5, 4), torch.uint8)]
    want = images.astype(np.float64).mean(axis=(1, 2))  # channel c of NHWC image i
    np.testing.assert_allclose(ref.features, want)
    np.testing.assert_allclose(ref.mu, want.mean(0))
    assert ref.count == 7
    with pytest.raises(ValueError, match="images only"):
        ev.read_statistics(images_only)


def test_statistics_format_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"bad\.npz.*mu/sigma"):
        ev.statistics_format(bad)
    np.savez(bad, mu=np.zeros(3), sigma=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"bad\.npz: mu and sigma"):
        ev.statistics_format(bad)
    np.savez(bad, arr_0=np.zeros((2, 3, 8, 8), np.uint8))  # NCHW is not ADM's layout
    with pytest.raises(ValueError, match=r"arr_0 must be"):
        ev.statistics_format(bad)
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"cannot read reference statistics .*bad\.npz"):
        ev.statistics_format(bad)
    with pytest.raises(ValueError, match=r"missing\.npz"):
        ev.read_statistics(tmp_path / "missing.npz")


def test_cached_reference_keeps_features_for_kid(tmp_path):
    f = _features(40, seed=6)
    path = tmp_path / "cache.npz"
    ref = ev.cached_reference(path, lambda: f)
    assert ref.features is None and ev.statistics_format(path) == "pytorch-fid"
    ref = ev.cached_reference(path, lambda: f, keep_features=True)  # no features yet: recomputed with them
    np.testing.assert_allclose(ref.features, f)
    ref2 = ev.cached_reference(path, lambda: pytest.fail("cached"), keep_features=True)
    np.testing.assert_allclose(ref2.features, f.astype(np.float32))
    np.testing.assert_array_equal(ref2.mu, ref.mu)
    assert ev.statistics_format(path) == "pytorch-fid"  # still readable by pytorch-fid (mu, sigma)


def test_cache_key_and_fid_protocol():
    base = {"dataset": "cifar10", "root": "/data/a", "split": "train", "count": 50000, "size": 32}
    assert ev.cache_key(**base) == ev.cache_key(**dict(reversed(list(base.items()))))
    for field, other in (("root", "/data/b"), ("split", "test"), ("count", 49999), ("size", 64)):
        assert ev.cache_key(**{**base, field: other}) != ev.cache_key(**base)
    ok = ev.fid_protocol(50_000, "cifar10 train split", 50_000, True)
    assert ok["fid_comparable"] and "fid_note" not in ok and ok["fid_samples"] == 50_000
    small = ev.fid_protocol(1000, "cifar10 train split", 50_000, True)
    assert not small["fid_comparable"] and "1000 samples" in small["fid_note"] and "not comparable" in small["fid_note"]
    partial = ev.fid_protocol(50_000, "cifar10 test split", 10_000, False)
    assert not partial["fid_comparable"] and "test split" in partial["fid_note"]


# --- KID ----------------------------------------------------------------------------------------


def test_mmd2_estimator_matches_explicit_double_sum():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    assert _mmd2_unbiased_poly(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_same_distribution_near_zero_different_clearly_positive():
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(600, 16, generator=g), torch.randn(600, 16, generator=g)
    mean, std = ev.kid(a, b, n_subsets=30, subset_size=200)
    assert std > 0 and abs(mean) < 3 * std
    mean_d, std_d = ev.kid(a, b * 1.3 + 0.4, n_subsets=30, subset_size=200)
    assert mean_d > 5 * std_d and mean_d > 20 * abs(mean)
    # subset_size larger than the sets is capped; the seed makes it reproducible
    assert ev.kid(a[:50], b[:80], n_subsets=3) == ev.kid(a[:50], b[:80], n_subsets=3)


def test_kid_is_unbiased():
    """Mean over independent repeats of same-distribution KID ≈ 0; the biased V-statistic is not."""
    rng = np.random.default_rng(7)
    vals, biased = [], []
    for _ in range(200):
        x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
        vals.append(ev.kid(x, y, n_subsets=1, subset_size=20)[0])
        k = lambda a, b: (a @ b.T / 4 + 1) ** 3  # noqa: E731
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    se = np.std(vals) / math.sqrt(len(vals))
    assert abs(np.mean(vals)) < 3.5 * se
    assert np.mean(biased) > 10 * se


# --- Inception Score ----------------------------------------------------------------------------


def test_inception_score_extremes():
    assert ev.inception_score(torch.zeros(100, 1008)) == pytest.approx((1.0, 0.0), abs=1e-12)
    onehot = torch.nn.functional.one_hot(torch.arange(100) % 10, 10).double()
    m, s = ev.inception_score(onehot, splits=10, from_probs=True)
    assert m == pytest.approx(10.0, rel=1e-12) and s == pytest.approx(0.0, abs=1e-12)
    m, _ = ev.inception_score(60.0 * onehot, splits=10)  # confident logits
    assert m == pytest.approx(10.0, rel=1e-6)
    m, _ = ev.inception_score(onehot[:, :10] * 0 + onehot[0], splits=5, from_probs=True)  # one class only
    assert m == pytest.approx(1.0)


def test_inception_score_matches_reference_formula():
    logits = torch.randn(90, 7, generator=torch.Generator().manual_seed(8), dtype=F64) * 2
    p = torch.softmax(logits, 1).numpy()
    scores = []
    for part in (p[i * len(p) // 3:(i + 1) * len(p) // 3] for i in range(3)):  # inception_score.py's chunks
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    m, s = ev.inception_score(logits, splits=3)
    assert m == pytest.approx(np.mean(scores), rel=1e-12) and s == pytest.approx(np.std(scores), rel=1e-10)
    # torch-fidelity's convention: rows permuted by RandomState(2020) first, then the same contiguous splits
    shuffled = p[np.random.RandomState(2020).permutation(len(p))]
    fidelity = [np.exp(np.sum(q * (np.log(q) - np.log(q.mean(0, keepdims=True))), 1).mean())
                for q in (shuffled[i * len(p) // 3:(i + 1) * len(p) // 3] for i in range(3))]
    m2, s2 = ev.inception_score(logits, splits=3, shuffle_seed=2020)
    assert m2 == pytest.approx(np.mean(fidelity), rel=1e-12) and s2 == pytest.approx(np.std(fidelity), rel=1e-10)
    assert abs(s2 - s) > 1e-6  # the permutation does change the splits


ISC_GOLDEN = json.loads((Path(__file__).parent / "data" / "torch_fidelity_isc.json").read_text())["cases"]


@pytest.mark.parametrize("c", ISC_GOLDEN, ids=lambda c: f"n{c['n']}-splits{c['splits']}-shuffle{int(c['shuffle'])}")
def test_inception_score_splits_are_torch_fidelitys_for_any_n(c):
    """Golden numbers from torch-fidelity metric_isc.py `isc_features_to_metric` (tests/data/torch_fidelity_isc.json):
    chunk i is rows i·N//splits … (i+1)·N//splits (Salimans et al.'s inception_score.py), so for N not divisible
    by the splits every row counts and the chunk sizes differ by one (not np.array_split's larger first chunks)."""
    logits = 3.0 * torch.randn(c["n"], c["k"], generator=torch.Generator().manual_seed(c["seed"]), dtype=F64)
    m, s = ev.inception_score(logits, splits=c["splits"], shuffle_seed=2020 if c["shuffle"] else None)
    assert m == pytest.approx(c["mean"], rel=1e-12) and s == pytest.approx(c["std"], rel=1e-10)


def test_inception_score_of_the_network_uses_unbiased_logits(inception_file):
    # the standard IS (improved-gan, torch-fidelity logits_unbiased): softmax of pool3·Wᵀ, no fc bias
    model = ev.load_inception(inception_file)
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(1008, 2048, generator=g) * 0.05)
        model.fc.bias.copy_(torch.randn(1008, generator=g) * 4)  # a large bias: it changes the score
    # a randomly initialised trunk gives near-constant ~1e-8 features; spread pool3 out (the trunk is pinned
    # by the tests below), so the logits and the score differ from image to image
    trunk = model.pool3
    model.pool3 = lambda x: trunk(x) + 30 * x.flatten(1).repeat(1, 3)[:, :2048].float()
    x = torch.rand(10, 3, 16, 16, generator=g)
    feats, logits = ev.inception_features(model, x)
    w = model.fc.weight.detach().double().numpy()
    unbiased = feats.double().numpy() @ w.T
    np.testing.assert_allclose(logits.double().numpy(), unbiased, rtol=1e-4, atol=1e-4)

    def standard_is(z, splits):  # Salimans et al.'s formula over contiguous splits, numpy float64
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        s = [np.exp(np.mean(np.sum(q * (np.log(q) - np.log(q.mean(0, keepdims=True))), 1)))
             for q in np.array_split(p, splits)]
        return np.mean(s), np.std(s)

    m, s = ev.inception_score(logits, splits=5)
    want_m, want_s = standard_is(unbiased, 5)
    assert m == pytest.approx(want_m, rel=1e-5) and s == pytest.approx(want_s, rel=1e-3, abs=1e-6)
    biased_m, _ = standard_is(unbiased + model.fc.bias.detach().double().numpy(), 5)
    assert abs(biased_m - want_m) > 1e-2 * want_m  # with the bias the score would differ


# --- feature extraction -------------------------------------------------------------------------


class _Probe(nn.Module):
    """Returns (per-image min, per-image max) and counts calls: a stand-in feature network."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.flatten(1).amin(1, keepdim=True) + self.w, x.flatten(1).amax(1, keepdim=True)


def test_extract_features_batches_tuples_and_loaders():
    model = _Probe()
    x = torch.rand(23, 1, 4, 4)
    lo, hi = ev.extract_features(model, x, batch_size=10)
    assert model.calls == 3 and lo.shape == (23, 1) and hi.shape == (23, 1)
    torch.testing.assert_close(hi[:, 0], x.flatten(1).amax(1))
    pairs = [(x[:12], torch.zeros(12)), (x[12:], torch.zeros(11))]  # a DataLoader's (x, y) batches
    lo2, _ = ev.extract_features(model, pairs)
    torch.testing.assert_close(lo2, lo)
    single = ev.extract_features(nn.Flatten(), iter([x[:5], x[5:]]))
    assert isinstance(single, torch.Tensor) and single.shape == (23, 16)
    with pytest.raises(ValueError, match="no batches"):
        ev.extract_features(model, [])


def test_inception_features_value_range():
    x = torch.linspace(-1.5, 1.5, 3 * 5 * 5).reshape(1, 3, 5, 5).repeat(2, 1, 1, 1)
    lo, hi = ev.inception_features(_Probe(), x, value_range=(-1.0, 1.0))
    assert lo.flatten().tolist() == [0.0, 0.0] and hi.flatten().tolist() == [1.0, 1.0]  # mapped, clamped


# --- FID Inception network and loader -----------------------------------------------------------


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.manual_seed(0)
    torch.save(ev.FIDInceptionV3().state_dict(), path)
    return path


def test_inception_state_dict_layout_matches_pytorch_fid_format():
    sd = ev.FIDInceptionV3().state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_4a_3x3.bn.running_var"] == (192,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7a.branch7x7x3_4.conv.weight"] == (192, 192, 3, 3)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    assert not any(k.startswith("AuxLogits") for k in sd)
    # torchvision's Inception3 without the aux head has 23,834,568 parameters at 1000 classes
    n_params = sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k)
    assert n_params == 23_834_568 + 8 * 2049


def test_tf_average_pool_excludes_padding():
    out = _tf_avg_pool(torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(out, torch.ones(1, 1, 4, 4))  # with padding counted the corner would be 4/9


def test_load_inception_from_file_and_forward_shapes(inception_file):
    model = ev.load_inception(inception_file)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    feats, logits = ev.inception_features(model, x)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # pool3 averages ReLU outputs


def test_load_inception_env_var_and_safetensors(inception_file, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv(ev.INCEPTION_ENV, str(inception_file))
    m1 = ev.load_inception()
    st = tmp_path / "inception.safetensors"
    save_file(m1.state_dict(), str(st))
    m2 = ev.load_inception(st)
    torch.testing.assert_close(m2.Mixed_7c.branch_pool.conv.weight, m1.Mixed_7c.branch_pool.conv.weight)


def test_load_inception_missing_file_names_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / ev.INCEPTION_FILENAME
    with pytest.raises(FileNotFoundError) as err:
        ev.load_inception(missing)
    assert isinstance(err.value, ev.InceptionWeightsNotFoundError)
    msg = str(err.value)
    assert str(missing) in msg and "pytorch-fid" in msg and ev.INCEPTION_URL in msg and ev.INCEPTION_ENV in msg
    monkeypatch.setenv(ev.INCEPTION_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(ev.InceptionWeightsNotFoundError, match=r"env\.pth"):
        ev.load_inception()


def test_load_inception_wrong_file_names_the_file(tmp_path):
    wrong = tmp_path / "wrong_keys.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match=r"wrong_keys\.pth") as err:
        ev.load_inception(wrong)
    assert "566" not in str(err.value) and "missing keys" in str(err.value) and len(str(err.value)) < 600
    sd = ev.FIDInceptionV3().state_dict()
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # torchvision's 1000 classes
    torch.save(sd, wrong)
    with pytest.raises(ValueError, match=r"fc\.weight \(1000, 2048\) \(expected \(1008, 2048\)\)"):
        ev.load_inception(wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth"):
        ev.load_inception(junk)


def test_evaluate_samples_images_with_cached_statistics(inception_file, tmp_path, monkeypatch):
    # the 2048-D matrix square root takes a minute on a busy CPU: check the wiring with ‖μ₁ - μ₂‖² instead
    calls = []

    def mean_distance(mu1, sigma1, mu2, sigma2, method):
        calls.append((sigma1.shape, sigma2.shape, method))
        return float(np.sum((mu1 - mu2) ** 2))

    monkeypatch.setattr(ev, "frechet_distance", mean_distance)
    g = torch.Generator().manual_seed(16)
    real = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)
    samples = real.float() / 127.5 - 1  # the same images in [-1, 1]
    stats = tmp_path / "ref.npz"
    out = ev.evaluate_samples(samples, "images", value_range=(-1.0, 1.0), real=real, real_value_range=(0.0, 255.0),
                              inception_path=inception_file, stats_path=stats)
    assert set(out) == {"fid", "kid", "kid_std", "is", "is_std", "fid_reference_format", "fid_reference_count"}
    assert stats.is_file() and out["fid_reference_count"] == 3
    assert abs(out["fid"]) < 1e-3 and abs(out["kid"]) < 1e-6 and out["is"] >= 1.0
    fid_only = ev.evaluate_samples(samples[:2], "images", metrics=("fid",), value_range=(-1.0, 1.0),
                                   inception_path=inception_file, stats_path=stats)  # statistics from the cache
    assert set(fid_only) == {"fid", "fid_reference_format", "fid_reference_count"} and fid_only["fid"] > 0
    assert calls == [((2048, 2048), (2048, 2048), "sqrtm")] * 2
    with pytest.raises(ValueError, match="kind"):
        ev.evaluate_samples(samples, "audio")


def test_evaluate_samples_against_reference_files(inception_file, tmp_path, monkeypatch):
    # an ADM batch of images only goes through the same network as `real` would (NHWC uint8 -> NCHW in [0, 1]);
    # the pytorch-fid file of those statistics gives the same FID; a mu/sigma-only file cannot give KID
    monkeypatch.setattr(ev, "frechet_distance", lambda m1, s1, m2, s2, method: float(np.sum((m1 - m2) ** 2)))
    model = ev.load_inception(inception_file)
    monkeypatch.setattr(ev, "load_inception", lambda path, device: model)
    g = torch.Generator().manual_seed(30)
    real = torch.randint(0, 256, (4, 3, 12, 12), generator=g, dtype=torch.uint8)
    samples = torch.rand(3, 3, 12, 12, generator=g)
    adm = tmp_path / "VIRTUAL_tiny.npz"
    np.savez(adm, arr_0=real.permute(0, 2, 3, 1).numpy())
    from_real = ev.evaluate_samples(samples, "images", metrics=("fid", "kid"), real=real, real_value_range=(0, 255),
                                    batch_size=2)
    from_adm = ev.evaluate_samples(samples, "images", metrics=("fid", "kid"), reference_path=adm, batch_size=2)
    assert from_adm["fid_reference_format"] == "adm" and from_adm["fid_reference_count"] == 4
    assert from_adm["fid"] == pytest.approx(from_real["fid"], rel=1e-6, abs=1e-30)
    assert from_adm["kid"] == pytest.approx(from_real["kid"], rel=1e-6, abs=1e-30)
    real_feats = ev.inception_features(model, real, (0, 255))[0]
    stats = tmp_path / "fid_stats.npz"
    ev.save_statistics(stats, *ev.feature_statistics(real_feats))
    from_stats = ev.evaluate_samples(samples, "images", metrics=("fid", "kid"), reference_path=stats)
    assert from_stats["fid"] == pytest.approx(from_real["fid"], rel=1e-6, abs=1e-30)
    assert "kid" not in from_stats and "statistics, not features" in from_stats["kid_note"]


def test_check_statistics_reads_stored_statistics(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, mu=np.array([0.0, np.nan]), sigma=np.eye(2))
    with pytest.raises(ValueError, match=r"ref\.npz: mu or sigma is not finite"):
        ev.check_statistics(path)
    np.savez(path, mu=np.zeros(2), sigma=np.eye(2))
    assert ev.check_statistics(path) == "pytorch-fid"
    np.savez(path, pool_3=np.zeros((3, 2), np.float32))
    assert ev.check_statistics(path) == "score_sde"


def _real_inception_path():
    env = os.environ.get(ev.INCEPTION_ENV)
    path = env if env else ev.default_inception_path()
    return path if os.path.isfile(path) else None


@pytest.mark.skipif(_real_inception_path() is None, reason="pt_inception-2015-12-05-6726825d.pth not present")
def test_real_inception_weights_key_set():
    path = _real_inception_path()
    sd = _read_state_dict(Path(path))
    mine = ev.FIDInceptionV3().state_dict()
    strip = lambda keys: {k for k in keys if not k.endswith("num_batches_tracked")}  # noqa: E731
    assert strip(sd) == strip(mine)
    assert all(sd[k].shape == mine[k].shape for k in strip(sd))
    model = ev.load_inception(path)
    feats, logits = model(torch.full((1, 3, 64, 64), 0.5))
    assert feats.shape == (1, 2048) and logits.shape == (1, 1008) and torch.isfinite(logits).all()


# --- digits FID ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("digits")
    ev.digits_feature_extractor(cache)  # trains once (a few seconds) and writes the checkpoint
    return cache


def test_digits_split_is_fixed():
    tr_x, tr_y, te_x, te_y = ev.digits_split()
    assert tr_x.shape == (1200, 1, 8, 8) and te_x.shape == (597, 1, 8, 8)
    assert tr_x.min() == 0 and tr_x.max() == 1 and tr_y.dtype == torch.int64
    assert torch.bincount(te_y).min() > 40  # every class is held out
    torch.testing.assert_close(ev.digits_split()[2], te_x)


def test_digits_classifier_accuracy_and_cached_reload(digits_cache, monkeypatch):
    assert (digits_cache / digits_mod.CHECKPOINT_NAME).is_file()

    def no_training(**_):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(digits_mod, "train_digits_classifier", no_training)
    model = ev.digits_feature_extractor(digits_cache)
    _, _, x, y = ev.digits_split()
    feats, logits = model(x)
    assert feats.shape == (597, 64) and (logits.argmax(1) == y).double().mean() > 0.95
    assert (feats.std(0) > 0).all()  # no dead features


def test_digits_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    ckpt = tmp_path / digits_mod.CHECKPOINT_NAME
    ckpt.write_bytes(b"corrupt")
    monkeypatch.setattr(digits_mod, "train_digits_classifier", lambda: ev.DigitsClassifier().eval())
    ev.digits_feature_extractor(tmp_path)
    from safetensors.torch import load_file

    assert set(load_file(str(ckpt))) == set(ev.DigitsClassifier().state_dict())


def test_digits_fid_real_vs_noise(digits_cache):
    tr_x, tr_y, te_x, _ = ev.digits_split()
    real = ev.digits_fid(tr_x, digits_cache)
    assert 0 < real["fid_floor"] < 10 and real["fid"] == pytest.approx(real["fid_train"])
    assert real["fid"] < 2 * real["fid_floor"]
    assert real["accuracy"] > 0.95 and real["n_samples"] == 1200
    assert real["class_entropy"] > 0.99 * math.log(10) and sum(real["class_histogram"]) == pytest.approx(1.0)
    assert abs(ev.digits_fid(te_x, digits_cache)["fid"]) < 1e-6  # the held-out set against itself
    noise = ev.digits_fid(torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(11)) * 2 - 1,
                          digits_cache, value_range=(-1.0, 1.0))
    assert noise["fid"] > 10 * real["fid_floor"]
    threes = ev.digits_fid(tr_x[tr_y == 3], digits_cache)  # one mode only
    assert threes["class_entropy"] < 0.3 and threes["fid"] > 10 * real["fid_floor"]
    with pytest.raises(ValueError, match="8, 8"):
        ev.digits_fid(torch.rand(4, 64), digits_cache)


def test_evaluate_samples_digits_with_a_reference_and_toy(digits_cache):
    tr_x, _, te_x, _ = ev.digits_split()
    out = ev.evaluate_samples(te_x[:300] * 16, "digits", value_range=(0.0, 16.0), real=tr_x * 255,
                              real_value_range=(0.0, 255.0), cache_dir=digits_cache)
    assert out["fid"] < 2 * out["fid_floor"] and out["n_samples"] == 300
    assert ev.evaluate_samples(tr_x[:100], "digits", real=tr_x[:100], cache_dir=digits_cache)["fid"] < 1e-6
    gmm = mixture(d=2, k=3, seed=17)
    g = torch.Generator().manual_seed(17)
    toy = ev.evaluate_samples(gmm.sample(300, generator=g), "toy", real=gmm.sample(300, generator=g), gmm=gmm)
    assert abs(toy["mmd_rbf"]) < 0.02 and toy["mean_log_density"] == pytest.approx(toy["mean_log_density_real"],
                                                                                    abs=0.3)
    with pytest.raises(ValueError, match="real"):
        ev.evaluate_samples(gmm.sample(10), "toy")


@pytest.mark.slow
def test_digits_training_is_deterministic_and_accurate():
    a, b = ev.train_digits_classifier(), ev.train_digits_classifier()
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    _, _, x, y = ev.digits_split()
    assert (a(x)[1].argmax(1) == y).double().mean() > 0.97


# --- toy metrics --------------------------------------------------------------------------------


def mean_abs_sphere_coordinate(d: int) -> float:
    """E|θ₁| for θ uniform on S^{d-1}: Γ(d/2) / (√π Γ((d+1)/2)); 2/π in 2-D."""
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)


@pytest.mark.parametrize("d", [2, 5])
def test_sliced_wasserstein_of_shifted_gaussians(d):
    """N(0, I) vs N(δ, I): each projection is a 1-D shift by ⟨δ, θ⟩, whose W_p is |⟨δ, θ⟩|."""
    g = torch.Generator().manual_seed(12)
    delta = torch.arange(1.0, d + 1)
    delta = 20 * delta / delta.norm()  # a long shift, so the finite-sample noise is relatively small
    x, y = torch.randn(300, d, generator=g), torch.randn(200, d, generator=g) + delta  # unequal sizes
    sw1 = ev.sliced_wasserstein(x, y, n_projections=4000, p=1, generator=g)
    sw2 = ev.sliced_wasserstein(x, y, n_projections=4000, p=2, generator=g)
    assert sw1 == pytest.approx(20 * mean_abs_sphere_coordinate(d), rel=0.04)
    assert sw2 == pytest.approx(20 / math.sqrt(d), rel=0.04)  # E⟨δ, θ⟩² = ‖δ‖² / d
    assert mean_abs_sphere_coordinate(2) == pytest.approx(2 / math.pi)
    same = ev.sliced_wasserstein(x, torch.randn(300, d, generator=g), generator=g)
    assert same < 0.1 * sw2


def test_wasserstein_1d_exact_with_unequal_sizes():
    rng = np.random.default_rng(13)
    u, v = rng.normal(size=30), rng.gamma(2.0, size=17)
    w1 = ev.wasserstein_1d(torch.tensor(u)[None], torch.tensor(v)[None], p=1)
    assert float(w1) == pytest.approx(scipy.stats.wasserstein_distance(u, v), rel=1e-12)
    # W_2² with unequal sizes equals the equal-size formula on sets repeated 17 and 30 times
    w2 = ev.wasserstein_1d(torch.tensor(u)[None], torch.tensor(v)[None], p=2)
    want = np.mean((np.sort(np.repeat(u, 17)) - np.sort(np.repeat(v, 30))) ** 2)
    assert float(w2) == pytest.approx(want, rel=1e-12)
    one_d = ev.sliced_wasserstein(torch.tensor(u)[:, None], torch.tensor(v)[:, None], n_projections=3, p=1)
    assert one_d == pytest.approx(scipy.stats.wasserstein_distance(u, v), rel=1e-12)


def test_mmd_rbf_same_and_different_distributions():
    g = torch.Generator().manual_seed(14)
    x, y = torch.randn(500, 2, generator=g), torch.randn(400, 2, generator=g)
    same = ev.mmd_rbf(x, y)
    diff = ev.mmd_rbf(x, y + torch.tensor([1.0, 0.0]))
    assert abs(same) < 0.005 and diff > 0.05
    h = ev.median_bandwidth(x, y)
    assert h == pytest.approx(2 * math.sqrt(math.log(2)), rel=0.05)  # ‖a - b‖² ~ 2χ²₂: median 2·√(ln 2)
    assert ev.mmd_rbf(x, y, bandwidth=h) == pytest.approx(same, rel=1e-12)


def test_mean_log_density_matches_entropy_estimate():
    gmm = mixture(d=2, k=3, seed=15)
    g = torch.Generator().manual_seed(15)
    a, b = gmm.sample(4000, generator=g), gmm.sample(20000, generator=g)
    la, lb = gmm.log_prob(a.double()), gmm.log_prob(b.double())
    tol = 4 * math.sqrt(float(la.var()) / 4000 + float(lb.var()) / 20000)
    assert ev.mean_log_density(a, gmm) == pytest.approx(float(lb.mean()), abs=tol)  # ≈ -H(p)
    far = a + 10.0  # samples off the mixture have far lower log-density
    assert ev.mean_log_density(far, gmm) < float(lb.mean()) - 10
    out = ev.toy_metrics(a[:500], b[:500], gmm, generator=g)
    assert set(out) == {"sliced_wasserstein", "mmd_rbf", "mean_log_density", "mean_log_density_real"}
