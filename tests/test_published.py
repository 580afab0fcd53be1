"""Published checkpoints of the reference code load into scorelib and give the reference's score.

tests/data/published_golden.json holds numbers recorded by running the reference code itself (scratch
copies of yang-song/score_sde_pytorch, ermongroup/ncsn, ermongroup/ncsnv2, ermongroup/ddim,
openai/improved-diffusion, openai/guided-diffusion on CPU): for a small network of each format, its
state_dict names and shapes in the reference's order, and its output under the reference's own sampling
convention (score_sde `get_score_fn`; ncsnv2 `model(x, labels)`; ddim `model(x_t, t)`; improved- and
guided-diffusion `SpacedDiffusion._wrap_model(model)(x_t, respaced_t)`; the classifier's logits) with
every parameter drawn as 0.2·N(0, 1) in state_dict order from a seeded generator. Here the same weights
are rebuilt under the reference names, saved in the reference's exact checkpoint layout, loaded with
`scorelib.load`, and the σ-space model is compared with those numbers, mapped to σ-space with the
formulas of docs/design.md §1 written out independently below.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from builds import network
from cli_helpers import run_main, sample_file
from ml_collections import ConfigDict

import scorelib
from scorelib import formats, presets, releases
from scorelib.builder.configs import with_overrides
from scorelib.builder.fields import base
from scorelib.checkpoint import CheckpointError

GOLD = json.loads((Path(__file__).parent / "data" / "published_golden.json").read_text())


pytestmark = pytest.mark.usefixtures("one_thread")


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recorder's inputs: x16, x32, x64 drawn in that order from one seeded generator."""
    g = torch.Generator().manual_seed(7)
    return (torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 32, 32, generator=g),
            torch.randn(2, 3, 64, 64, generator=g))


def reference_weights(keys: list, seed: int, buffers: dict | None = None) -> dict[str, torch.Tensor]:
    """The recorder's weights: 0.2·N(0,1) per parameter in state_dict order ([name, shape, is_param])."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape, *is_param in keys:
        if not is_param or is_param[0]:
            out[name] = 0.2 * torch.randn(shape, generator=g, dtype=torch.float64).float()
        else:
            out[name] = (buffers or {}).get(name, torch.zeros(shape))
    return out


def assert_matches(got: torch.Tensor, rec: dict, atol: float = 2e-4, rtol: float = 1e-4) -> None:
    sub = torch.tensor(rec["sub"], dtype=torch.float32)
    torch.testing.assert_close(got[:, :, ::3, ::3].flatten(), sub, atol=atol, rtol=rtol)
    assert math.isclose(float(got.double().sum()), rec["sum"], rel_tol=1e-4, abs_tol=1e-2)


def optimizer_state() -> dict:
    return {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}


# ------------------------------------------------------------------------------ score_sde_pytorch


def _score_sde_config(case: str) -> ConfigDict:
    c = base()
    c.data.image_size, c.data.channels = 16, 3
    m = c.model
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.dropout = 16, (1, 2), 1, (8,), 0.0
    if case == "ve_ncsnpp_continuous":
        m.name, c.noise.kind, c.data.centered = "ncsnpp", "ve_continuous", False
        m.fir, m.progressive_input, m.embedding_type, m.fourier_scale = True, "residual", "fourier", 16.0
        c.noise.sigma_min, c.noise.sigma_max = 0.01, 50.0
    else:
        m.name, c.data.centered = "ddpmpp", True
        c.noise.kind = "subvp" if case.startswith("subvp") else "vp"
        m.fir, m.progressive_input, m.embedding_type = False, "none", "positional"
        c.noise.beta_min, c.noise.beta_max = 0.1, 20.0
        if case == "vp_ncsnpp_ddpmblocks_skip":
            m.resblock_type, m.progressive, m.progressive_input = "ddpm", "output_skip", "input_skip"
    return c


def _sde_mean_std(case: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m(t), std(t) of score_sde's sde_lib marginal_prob (VESDE σ_min(σ_max/σ_min)^t; VP / sub-VP)."""
    t = t.double()
    if case.startswith("ve"):
        return torch.ones_like(t), 0.01 * (50.0 / 0.01) ** t
    log_mean = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    m = log_mean.exp()
    std = (1 - (2 * log_mean).exp()) if case.startswith("subvp") else (1 - (2 * log_mean).exp()).sqrt()
    return m, std


@pytest.mark.parametrize("case", sorted(GOLD["score_sde"]))
def test_score_sde_checkpoint_matches_get_score_fn(case: str, tmp_path: Path) -> None:
    rec = GOLD["score_sde"][case]
    raw, ema = reference_weights(rec["keys"], 1), reference_weights(rec["keys"], 2)
    # utils.py save_checkpoint: the DataParallel model's state_dict and ExponentialMovingAverage.state_dict()
    state = {"optimizer": optimizer_state(), "model": {f"module.{k}": v for k, v in raw.items()},
             "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": [ema[k] for k in rec["requires_grad"]]},
             "step": 7}
    path = tmp_path / "checkpoint_7.pth"
    torch.save(state, path)
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(rec["x_seed"]))
    t = torch.tensor(rec["t"])
    m, std = _sde_mean_std(case, t)
    sigma = (std / m).float()  # σ-space: x_σ = x_t / m(t), σ = std/m, score_σ = m · score_t (docs/design.md §1)
    x = x_t / m.float()[:, None, None, None]
    for use_ema, seed in ((True, 2), (False, 1)):
        score = scorelib.load(path, config=_score_sde_config(case), ema=use_ema)
        with torch.no_grad():
            got = score(x, sigma) / m.float()[:, None, None, None]
        assert_matches(got, {"sub": rec[f"score_seed{seed}"], "sum": rec[f"score_seed{seed}_sum"]},
                       atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("case", ["ve_ncsnpp_discrete", "vp_ddpmpp_discrete"])
def test_score_sde_discrete_checkpoints_use_level_and_timestep_labels(case: str, tmp_path: Path) -> None:
    rec = GOLD["score_sde_discrete"][case]
    levels = np.exp(np.linspace(np.log(50.0), np.log(0.01), 1000))  # models/utils.py get_sigmas, descending
    # the golden scores are of weights seed 1, stored as the EMA; the raw training weights (seed 2) differ, so
    # the checkpoint's EMA must be what loads (score_sde's run_lib.py evaluates `ema.copy_to(score_model.parameters())`)
    w, raw = reference_weights(rec["keys"], 1), reference_weights(rec["keys"], 2)
    raw["sigmas"] = torch.tensor(levels)
    path = tmp_path / "checkpoint_3.pth"
    torch.save({"optimizer": optimizer_state(), "model": {f"module.{k}": v for k, v in raw.items()},
                "ema": {"decay": 0.999, "num_updates": 3, "shadow_params": [w[k] for k, _ in rec["keys"]
                                                                          if k != "sigmas"]}, "step": 3}, path)
    c = _score_sde_config("ve_ncsnpp_continuous" if case.startswith("ve") else "vp_ddpmpp_continuous")
    c.model.embedding_type = "positional"
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(123))
    labels = torch.tensor(rec["labels"]).long()
    if case.startswith("ve"):  # labels = round((T - t)(N - 1)) index the descending levels
        c.noise.kind, c.noise.num_scales = "ve", 1000
        sigma, m = torch.tensor(levels)[labels], torch.ones(2, dtype=torch.float64)
    else:  # sde_lib.VPSDE discrete_betas = linspace(β_min/N, β_max/N, N); std = sqrt_1m_alphas_cumprod[label]
        c.noise.kind, c.noise.num_scales, c.noise.beta_start, c.noise.beta_end = "ddpm", 1000, 1e-4, 0.02
        abar = np.cumprod(1 - np.linspace(0.1 / 1000, 20 / 1000, 1000))
        sigma = _vp_sigma(abar, labels.tolist())
        m = 1 / (1 + sigma**2).sqrt()
    x, s = x_t / m.float()[:, None, None, None], sigma.float()
    with torch.no_grad():
        got = scorelib.load(path, config=c)(x, s) / m.float()[:, None, None, None]
        training = scorelib.load(path, config=c, ema=False)(x, s) / m.float()[:, None, None, None]
    assert_matches(got, {"sub": rec["score_seed1"], "sum": rec["score_seed1_sum"]}, atol=2e-3, rtol=1e-4)
    assert (training - got).abs().max() > 1e-2  # the raw weights are another network


def test_score_sde_names_cover_the_network_in_reference_order() -> None:
    for case, rec in GOLD["score_sde"].items():
        net = network(_score_sde_config(case))
        names = formats.ncsnpp_reference_names(net)
        assert [ref for ref, _, _ in names] == [k for k, _ in rec["keys"] if k != "sigmas"], case
        ours = {o for _, o, _ in names}
        assert {n for n, _ in net.named_parameters()} <= ours


# ------------------------------------------------------------------------------ ncsn / ncsnv2


def _ncsnv2_config() -> ConfigDict:
    c = base()
    c.data.image_size, c.data.centered = 16, False
    c.model.name, c.model.nf = "ncsnv2", 16
    c.noise.sigma_max, c.noise.sigma_min, c.noise.num_scales = 50.0, 0.01, 10
    return c


def test_ncsnv2_checkpoint_list_uses_ema_by_default(tmp_path: Path) -> None:
    rec = GOLD["ncsnv2"]
    levels = torch.tensor(np.exp(np.linspace(np.log(50.0), np.log(0.01), 10))).float()
    raw = reference_weights(rec["keys"], 1, {"sigmas": levels})
    shadow = {k: v for k, v in reference_weights(rec["keys"], 2).items() if k != "sigmas"}
    # runners/ncsn_runner.py train: [score.state_dict() (DataParallel), optimizer, epoch, step, ema_helper]
    path = tmp_path / "checkpoint_5000.pth"
    torch.save([{f"module.{k}": v for k, v in raw.items()}, optimizer_state(), 3, 5000, shadow], path)
    x16 = inputs()[0]
    x, y = x16.clamp(0, 1) + 0.3 * x16, torch.tensor([2, 7])
    for use_ema, seed in ((True, 2), (False, 1)):
        score = scorelib.load(path, config=_ncsnv2_config(), ema=use_ema)
        with torch.no_grad():
            assert_matches(score(x, levels[y]), rec[f"seed{seed}"])
    no_ema = tmp_path / "checkpoint.pth"
    torch.save([{f"module.{k}": v for k, v in raw.items()}, optimizer_state(), 3, 5000], no_ema)
    with torch.no_grad():
        assert_matches(scorelib.load(no_ema, config=_ncsnv2_config())(x, levels[y]),
                       rec["seed1"])


def test_ncsn_checkpoint_maps_sigma_to_its_level(tmp_path: Path) -> None:
    rec = GOLD["ncsn"]
    c = base()
    c.data.image_size, c.data.centered = 16, False
    c.model.name, c.model.nf = "ncsn", 16
    c.noise.sigma_max, c.noise.sigma_min, c.noise.num_scales = 1.0, 0.01, 10
    path = tmp_path / "checkpoint.pth"
    # runners/anneal_runner.py train: [score.state_dict() (DataParallel), optimizer.state_dict()]
    torch.save([{f"module.{k}": v for k, v in reference_weights(rec["keys"], 1).items()}, optimizer_state()], path)
    levels = torch.tensor(np.exp(np.linspace(np.log(1.0), np.log(0.01), 10))).float()
    x16 = inputs()[0]
    x, y = x16.clamp(0, 1) + 0.3 * x16, torch.tensor([2, 7])
    with torch.no_grad():
        assert_matches(scorelib.load(path, config=c)(x, levels[y]), rec["seed1"])


# ------------------------------------------------------------------------------ ddim / DDPM


def _ddpm_config() -> ConfigDict:
    c = base()
    c.data.image_size, c.data.centered = 16, True
    c.model.name, c.model.nf, c.model.ch_mult, c.model.num_res_blocks = "ddpm", 32, (1, 2), 1
    c.model.attn_resolutions, c.model.dropout = (8,), 0.0
    c.noise.kind, c.noise.num_scales, c.noise.beta_schedule = "ddpm", 1000, "linear"
    return c


def _vp_sigma(alphas_cumprod: np.ndarray, t: list[int]) -> torch.Tensor:
    a = alphas_cumprod[np.array(t)]
    return torch.tensor(np.sqrt((1 - a) / a))


def _eps_to_score_check(score, x_t: torch.Tensor, sigma: torch.Tensor, rec: dict, channels: int = 3,
                        **kwargs) -> None:
    """score(x_t √(1+σ²), σ) = -ε/σ with ε the reference output (first C channels)."""
    x = x_t * (1 + sigma**2).sqrt().float()[:, None, None, None]
    with torch.no_grad():
        eps = -score(x, sigma.float(), **kwargs) * sigma.float()[:, None, None, None]
    n = eps.shape[2]
    full = torch.tensor(rec["sub"]).reshape(2, -1, len(range(0, n, 3)), len(range(0, n, 3)))
    torch.testing.assert_close(eps[:, :, ::3, ::3], full[:, :channels], atol=2e-4, rtol=1e-4)


def test_ddim_reads_the_plain_ddpm_state_dict_and_its_training_list(tmp_path: Path) -> None:
    rec = GOLD["ddim"]
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # ddim get_beta_schedule("linear")
    sigma = _vp_sigma(np.cumprod(1 - betas), [10, 500])
    x_t = inputs()[0]
    plain = tmp_path / "ema_cifar10.ckpt"  # pytorch_diffusion's converted checkpoint: model.state_dict()
    torch.save(reference_weights(rec["keys"], 1), plain)
    _eps_to_score_check(scorelib.load(plain, config=_ddpm_config()), x_t, sigma, rec["seed1"])
    # ddim's own runs (runners/diffusion.py train): [model.state_dict() (DataParallel), optim, epoch, step, ema]
    listed = tmp_path / "ckpt.pth"
    torch.save([{f"module.{k}": v for k, v in reference_weights(rec["keys"], 1).items()}, optimizer_state(), 1, 10,
                reference_weights(rec["keys"], 2)], listed)
    _eps_to_score_check(scorelib.load(listed, config=_ddpm_config()), x_t, sigma, rec["seed2"])
    _eps_to_score_check(scorelib.load(listed, config=_ddpm_config(), ema=False), x_t, sigma, rec["seed1"])


# ------------------------------------------------------------------------------ improved / guided diffusion


def _cosine_alphas_cumprod(T: int) -> np.ndarray:
    """improved-diffusion betas_for_alpha_bar with the cosine ᾱ (s = 0.008, β ≤ 0.999)."""
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return np.cumprod(1 - betas)


def test_improved_diffusion_rescales_timesteps_on_the_respaced_grid(tmp_path: Path) -> None:
    rec = GOLD["improved"]
    path = tmp_path / "model.pt"
    torch.save(reference_weights(rec["keys"], 1), path)
    config = presets.openai_config(rec["flags"])
    assert config.model.rescale_timesteps and config.model.learn_sigma
    score = scorelib.load(path, config=config)
    original = [rec["timestep_map"][k] for k in rec["t_respaced"]]  # respace.py: the original timestep
    sigma = _vp_sigma(_cosine_alphas_cumprod(4000), original)
    _eps_to_score_check(score, inputs()[1], sigma, rec["seed1"])


def test_guided_diffusion_class_conditional_unet(tmp_path: Path) -> None:
    rec = GOLD["guided"]
    path = tmp_path / "model.pt"
    torch.save(reference_weights(rec["keys"], 1), path)
    score = scorelib.load(path, config=presets.openai_config(rec["flags"]))
    assert score.scorelib_config.model.rescale_timesteps is False  # guided-diffusion's default
    original = [rec["timestep_map"][k] for k in rec["t_respaced"]]
    sigma = _vp_sigma(_cosine_alphas_cumprod(1000), original)
    _eps_to_score_check(score, inputs()[1], sigma, rec["seed1"], y=torch.tensor(rec["y"]))


def test_guided_diffusion_noisy_classifier(tmp_path: Path) -> None:
    rec = GOLD["guided_classifier"]
    path = tmp_path / "classifier.pt"
    torch.save(reference_weights(rec["keys"], 1), path)
    flags = {"classifier": True, **{k: v for k, v in rec["flags"].items() if k.startswith("classifier")},
             "image_size": rec["flags"]["image_size"], "diffusion_steps": 1000, "noise_schedule": "linear"}
    classifier = scorelib.load(path, config=presets.openai_config(flags))
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    sigma = _vp_sigma(np.cumprod(1 - betas), rec["t"])
    x = inputs()[2] * (1 + sigma**2).sqrt().float()[:, None, None, None]
    with torch.no_grad():
        logits = classifier(x, sigma.float())
    torch.testing.assert_close(logits.flatten(), torch.tensor(rec["seed1"]["logits"]), atol=2e-4, rtol=1e-4)


def test_classifier_guidance_takes_a_published_classifier_file(tmp_path: Path) -> None:
    from scorelib import tasks
    from scorelib.builder import experiment

    rec = GOLD["guided_classifier"]
    path = tmp_path / "64x64_classifier.pt"
    torch.save(reference_weights(rec["keys"], 1), path)
    flags = {"classifier": True, "image_size": 64, "classifier_width": 64, "classifier_depth": 1}
    config = with_overrides(presets.openai_config(flags), {
        "training.target": "model", "model.name": "ddpm", "sampling.guidance": "classifier",
        "classifier.workdir": str(path)})
    classifier = tasks.guidance_classifier(experiment(config, mode="sample"), torch.device("cpu"))
    with torch.no_grad():
        logits = classifier(inputs()[2], torch.tensor(rec["t"]))
    torch.testing.assert_close(logits.flatten(), torch.tensor(rec["seed1"]["logits"]), atol=2e-4, rtol=1e-4)
    # a diffusion preset carries the classifier its README samples with (64 px: depth 4)
    c = presets.resolve_config("openai:64x64_diffusion").classifier
    assert (c.nf, c.num_res_blocks, c.attn_resolutions, c.ch_mult) == (128, 4, (32, 16, 8), (1, 2, 3, 4))


# Parameter counts of the released networks measured with the reference code (tests/test_models_adm.py).
PRESET_COUNTS = {"cifar10_uncond": 52_546_438, "imagenet64_uncond": 121_063_942, "64x64_diffusion": 295_904_454,
                 "128x128_diffusion": 421_529_606, "256x256_diffusion": 553_838_086,
                 "256x256_diffusion_uncond": 552_814_086, "512x512_diffusion": 558_997_638,
                 "128x128_classifier": 42_568_040, "256x256_classifier": 54_096_360}


@pytest.mark.parametrize("name", sorted(PRESET_COUNTS))
def test_openai_presets_build_the_released_networks(name: str) -> None:
    with torch.device("meta"):
        net = network(presets.resolve_config(f"openai:{name}"))
    assert sum(p.numel() for p in net.parameters()) == PRESET_COUNTS[name]


def test_released_file_names_pick_their_preset() -> None:
    assert releases.stem_preset(Path("cifar10_uncond_50M_500K.pt")) == "cifar10_uncond"
    assert releases.stem_preset(Path("lsun_uncond_100M_2400K_bs64.pt")) == "lsun_uncond"
    assert releases.stem_preset(Path("imagenet64_cond_270M_250K.pt")) == "imagenet64_cond"
    assert releases.stem_preset(Path("256x256_diffusion_uncond.pt")) == "256x256_diffusion_uncond"
    assert releases.stem_preset(Path("my_model.pt")) is None


# ------------------------------------------------------------------------------ diffusers


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusers_pipeline_folder(prediction_type: str, tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                        prediction_type=prediction_type)
    unet.save_pretrained(tmp_path / "unet")
    scheduler.save_pretrained(tmp_path / "scheduler")
    score = scorelib.load(tmp_path)
    t = torch.tensor([5, 700])
    abar = scheduler.alphas_cumprod.double()[t]
    sigma = ((1 - abar) / abar).sqrt()
    x_t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = unet(x_t, t).sample
        eps = out if prediction_type == "epsilon" else \
            abar.sqrt().float()[:, None, None, None] * out + (1 - abar).sqrt().float()[:, None, None, None] * x_t
        got = score(x_t * (1 + sigma**2).sqrt().float()[:, None, None, None], sigma.float())
    torch.testing.assert_close(got, -eps / sigma.float()[:, None, None, None], atol=1e-4, rtol=1e-4)


def test_diffusers_folder_without_diffusers_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)
    with pytest.raises(CheckpointError, match=r"diffusers folder; reading it needs diffusers"):
        scorelib.load(tmp_path)


# ------------------------------------------------------------------------------ errors and export


def _ncsnv2_file(tmp_path: Path) -> Path:
    rec = GOLD["ncsnv2"]
    path = tmp_path / "checkpoint.pth"
    torch.save([{f"module.{k}": v for k, v in reference_weights(rec["keys"], 1).items()}, optimizer_state(), 0, 1],
               path)
    return path


def test_wrong_config_names_the_file_and_the_first_key(tmp_path: Path) -> None:
    path = _ncsnv2_file(tmp_path)
    wider = _ncsnv2_config()
    wider.model.nf = 32
    with pytest.raises(CheckpointError, match=r"checkpoint\.pth: the ncsnv2 weights do not fit the config's "
                                              r"network: begin_conv\.weight has shape \(16, 3, 3, 3\) in the file"):
        scorelib.load(path, config=wider)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pth holds a ncsnv2 network, but the config describes "
                                              r"'ddpm'"):
        scorelib.load(path, config=_ddpm_config())
    with pytest.raises(CheckpointError, match=r"checkpoint\.pth is a ncsnv2 checkpoint, which carries no "
                                              r"architecture: pass a config"):
        scorelib.load(path)
    deeper = _ncsnv2_config()
    deeper.model.variant = "deeper"
    with pytest.raises(CheckpointError, match=r"checkpoint\.pth: the ncsnv2 weights do not fit .*: missing"):
        scorelib.load(path, config=deeper)


def test_truncated_unknown_and_code_carrying_files_give_one_line(tmp_path: Path) -> None:
    path = _ncsnv2_file(tmp_path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth is truncated \(\d+ bytes, a zip archive without its end"):
        scorelib.load(cut, config=_ncsnv2_config())
    odd = tmp_path / "odd.pth"
    torch.save([torch.zeros(3), 1], odd)
    with pytest.raises(CheckpointError, match=r"odd\.pth: unknown checkpoint layout \(a list of 2 entries\)"):
        scorelib.load(odd, config=_ncsnv2_config())
    # A broken EDM network snapshot (a pickle of torch_utils.persistence objects, read as data).
    edm = tmp_path / "network-snapshot-000000.pkl"
    edm.write_bytes(b"\x80\x02ctorch_utils.persistence\n_reconstruct_persistent_obj\nq\x00}q\x01\x85q\x02Rq\x03.")
    with pytest.raises(CheckpointError, match=r"network-snapshot-000000\.pkl: not a readable EDM / EDM2 pickle"):
        scorelib.load(edm, config=_ncsnv2_config())
    for error in (cut, odd, edm):
        with pytest.raises(CheckpointError) as info:
            scorelib.load(error, config=_ncsnv2_config())
        assert "\n" not in str(info.value)


def test_any_loaded_model_exports_to_safetensors(tmp_path: Path) -> None:
    rec = GOLD["score_sde"]["vp_ddpmpp_continuous"]
    w = reference_weights(rec["keys"], 1)
    path = tmp_path / "checkpoint_1.pth"
    torch.save({"optimizer": optimizer_state(), "model": {f"module.{k}": v for k, v in w.items()},
                "ema": {"decay": 0.9, "num_updates": 1, "shadow_params": [w[k] for k in rec["requires_grad"]]},
                "step": 1}, path)
    loaded = scorelib.load(path, config=_score_sde_config("vp_ddpmpp_continuous"))
    scorelib.save(loaded, tmp_path / "converted.safetensors")
    again = scorelib.load(tmp_path / "converted.safetensors")
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(again(x, sigma), loaded(x, sigma), rtol=0, atol=0)
    clf = GOLD["guided_classifier"]
    cpath = tmp_path / "classifier.pt"
    torch.save(reference_weights(clf["keys"], 1), cpath)
    flags = {"classifier": True, "image_size": 64, "classifier_width": 64, "classifier_depth": 1}
    classifier = scorelib.load(cpath, config=presets.openai_config(flags))
    scorelib.save(classifier, tmp_path / "clf.safetensors")
    x64, s = torch.randn(1, 3, 64, 64), torch.tensor([1.0])
    with torch.no_grad():
        torch.testing.assert_close(scorelib.load(tmp_path / "clf.safetensors")(x64, s), classifier(x64, s))


def test_adapter_rescale_timesteps_feeds_t_times_1000_over_T() -> None:
    seen = []

    def net(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x_t)

    abar = torch.tensor(_cosine_alphas_cumprod(4000))
    a = abar[[0, 1333, 3999]]
    sigma = ((1 - a) / a).sqrt()
    scorelib.EpsToScore(net, abar, rescale_timesteps=True)(torch.zeros(3, 2), sigma)
    scorelib.EpsToScore(net, abar)(torch.zeros(3, 2), sigma)
    torch.testing.assert_close(seen[0].double(), torch.tensor([0.0, 333.25, 999.75], dtype=torch.float64),
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(seen[1].double(), torch.tensor([0.0, 1333.0, 3999.0], dtype=torch.float64),
                               atol=1e-2, rtol=0)


# ------------------------------------------------------------------------------ the CLI


CLI_NCSNV2 = ("--config=ncsnv2_cifar", "--config.model.nf=16", "--config.data.image_size=16",
              "--config.noise.num_scales=10", "--config.sampling.n_steps_each=2", "--config.sampling.n_samples=4",
              "--config.sampling.batch_size=4", "--config.device=cpu")


def test_cli_samples_from_a_published_ncsnv2_checkpoint(tmp_path: Path) -> None:
    from scorelib.builder import experiment
    from scorelib.chunked import chunk_seed
    from scorelib.sampling import sample_images
    from scorelib.sharing import load_network

    path = tmp_path / "checkpoint_5000.pth"
    rec = GOLD["ncsnv2"]
    levels = torch.tensor(np.exp(np.linspace(np.log(50.0), np.log(0.01), 10))).float()
    raw = reference_weights(rec["keys"], 1, {"sigmas": levels})
    shadow = {k: v for k, v in reference_weights(rec["keys"], 2).items() if k != "sigmas"}
    torch.save([{f"module.{k}": v for k, v in raw.items()}, optimizer_state(), 3, 5000, shadow], path)
    result = run_main(*CLI_NCSNV2, "--mode=sample", f"--checkpoint={path}", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    samples = np.load(sample_file(tmp_path / "run", "ald"))["samples"]
    assert samples.shape == (4, 3, 16, 16) and np.isfinite(samples).all()
    # the same draws as the library's sampler on the EMA network of that file with the config's settings
    config = with_overrides(_ncsnv2_config(), {"sampling.n_steps_each": 2, "sampling.n_samples": 4,
                                                     "sampling.batch_size": 4})
    config = with_overrides(config, {"data.dataset": "cifar10", "device": "cpu"})
    net, _, _ = load_network(path, config=config)
    # chunk 0 of the sharded CLI sampler: 4 samples, one chunk of sampling.batch_size = 4
    expected = sample_images(experiment(config, mode="sample"), net, 4, torch.device("cpu"),
                             seed=chunk_seed(config.seed + 1, 0))
    np.testing.assert_allclose(samples, expected.float().numpy(), rtol=1e-5, atol=1e-5)
    # a config that does not fit the file, and --checkpoint with training: one line each, exit 2
    wrong = run_main("--config=ddpm_cifar", "--mode=sample", f"--checkpoint={path}", f"--workdir={tmp_path / 'w'}")
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0
    assert "checkpoint_5000.pth holds a ncsnv2 network, but the config describes 'ddpm'" in wrong.stderr
    train = run_main(*CLI_NCSNV2, "--mode=train", f"--checkpoint={path}", f"--workdir={tmp_path / 't'}")
    assert train.returncode == 2 and "--checkpoint: for --mode=sample" in train.stderr
    preset = run_main("--config=openai:bogus", "--mode=sample", f"--checkpoint={path}")
    assert preset.returncode == 2 and "--config: openai:bogus: unknown preset 'bogus'" in preset.stderr


def test_config_names_paths_and_presets_resolve() -> None:
    assert presets.resolve_config("ncsnv2_cifar").model.name == "ncsnv2"
    root = Path(__file__).resolve().parents[1]
    assert presets.resolve_config(root / "configs" / "ddpm_cifar.py").model.name == "ddpm"
    c = presets.resolve_config("openai:cifar10_uncond")
    assert (c.model.name, c.noise.num_scales, c.noise.beta_schedule, c.model.rescale_timesteps) == \
        ("iddpm", 4000, "cosine", True)
    assert presets.resolve_config("openai:64x64_classifier").training.target == "classifier"
    with pytest.raises(CheckpointError, match="unknown config 'nope'"):
        presets.resolve_config("nope")
