"""Every config field with its default. Experiment configs (configs/*.py) start from `base()` and
change what differs; stored configs (checkpoints, shared models) are read on top of it, so fields
added later get their defaults. Configs hold plain values only; `scorelib.build` reads them."""

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from .checkpoint import CheckpointError

REPO_ROOT = Path(__file__).resolve().parents[1]  # holds configs/, which the config files import


def base() -> ConfigDict:
    c = ConfigDict()
    c.seed = 42
    c.device = "auto"  # auto | cpu | cuda

    c.data = d = ConfigDict()
    d.dataset = "cifar10"  # cifar10 | mnist | folder | digits | toy
    d.root = "data"  # where the data set lives (cifar10: contains cifar-10-batches-py/)
    d.download = True  # fetch CIFAR-10 / MNIST when missing and the network allows it
    d.image_size = 32
    d.channels = 3
    d.random_flip = True
    d.uniform_dequantization = False
    d.centered = False  # False: data in [0, 1]; True: [-1, 1]
    d.num_classes = 10  # labels are used when the model is class-conditional
    d.toy = "gmm8"  # for dataset=toy: gmm8 | grid25 | two_modes | rings | swissroll | moons | checkerboard
    d.crop = 0  # folder: centre crop to this size before resizing (0 = the shorter side)
    d.test_fraction = 0.05  # folder: share of the images held out as the test split, by a hash of the file name

    c.model = m = ConfigDict()
    m.name = "ncsnv2"  # mlp | conv | ncsn | ncsnv2 | ddpm | iddpm | adm | ncsnpp | ddpmpp
    m.nf = 128  # base width (ngf / ch / model_channels / nf; MLP hidden width)
    m.ch_mult = (1, 2, 2, 2)
    m.num_res_blocks = 2  # MLP: number of hidden layers
    m.attn_resolutions = (16,)
    m.dropout = 0.0
    m.resamp_with_conv = True
    m.learn_sigma = False
    m.normalization = "instancenorm++"
    m.nonlinearity = "elu"
    m.variant = "base"  # ncsnv2: base | deeper | deepest
    m.num_heads = 4
    m.num_head_channels = -1
    m.use_scale_shift_norm = True
    m.resblock_updown = False
    m.use_new_attention_order = False
    m.class_dropout = 0.0  # adm: label dropout for classifier-free guidance
    m.fir = True
    m.progressive_input = "residual"
    m.embedding_type = "fourier"
    m.progressive = "none"  # ncsnpp / ddpmpp output pyramid: none | output_skip | residual (score_sde)
    m.progressive_combine = "sum"  # ncsnpp / ddpmpp input_skip pyramid join: sum | cat
    m.resblock_type = "biggan"  # ncsnpp / ddpmpp: biggan | ddpm residual blocks
    m.rescale_timesteps = False  # ddpm family: the network sees t·1000/T (improved-diffusion's default)
    m.fourier_scale = 16.0
    m.embed_dim = 64  # mlp
    m.data_std = 0.5  # mlp / conv input scaling
    m.ema_rate = 0.999

    c.noise = n = ConfigDict()
    n.kind = "ve"  # ve (NCSN levels) | ve_continuous | ddpm | vp | subvp
    n.sigma_min = 0.01
    n.sigma_max = 50.0
    n.num_scales = 232  # L noise levels (ve) / T timesteps (ddpm) / default sampling steps
    n.beta_schedule = "linear"  # ddpm: linear | cosine
    n.beta_start = 1e-4
    n.beta_end = 0.02
    n.beta_min = 0.1  # vp / subvp SDE
    n.beta_max = 20.0
    n.eps = 1e-5  # vp / subvp / ve_continuous: smallest t of training and likelihoods (score_sde losses.py)
    n.sampling_eps = 1e-3  # vp / subvp: smallest t the samplers reach (score_sde run_lib.py sampling_eps)

    c.training = t = ConfigDict()
    t.batch_size = 128
    t.n_iters = 300_000
    t.snapshot_freq = 5000  # checkpoint + sample grid every this many steps
    t.log_freq = 50
    t.keep_checkpoints = 3
    t.loss = "dsm"  # dsm | ssm | eps | hybrid | vlb
    t.anneal_power = 2.0
    t.reduce_mean = False  # dsm: True averages the squared error over dimensions, False sums it with ½
    # (score_sde's training.reduce_mean: True in its VP / sub-VP configs, False for VE)
    t.n_projections = 1  # ssm
    t.lambda_vlb = 0.001  # hybrid
    t.timestep_sampler = "uniform"  # ddpm: uniform | importance
    t.snapshot_samples = 64
    t.amp = True  # bf16 autocast on CUDA
    t.compile = False
    t.eval_at_end = False  # sample and evaluate when training finishes
    t.threads = 0  # CPU threads for torch (0 = torch's default)
    t.target = "model"  # model | classifier (the noisy classifier of classifier guidance)

    c.sampling = s = ConfigDict()
    s.method = "ald"  # ald | pc | ddpm | ddim | ode | euler_ancestral | heun | dpm_solver | unipc | fast
    s.init = "uniform"  # uniform (NCSN) | gaussian (σ_max · z)
    s.n_steps_each = 5
    s.step_lr = 6.2e-6
    s.denoise = True
    s.n_steps = 0  # steps / levels of the grid (0 = noise.num_scales; fast: NFE budget, 0 = 10)
    s.spacing = "uniform"  # ddpm timestep respacing: uniform | leading | trailing | quadratic
    s.eta = 0.0  # ddim and euler_ancestral: 0 deterministic, 1 ancestral
    s.variance = "large"  # ddpm ancestral: small (β̃) | large (β) | learned (the network's Σ; model.learn_sigma)
    s.clip_denoised = False  # ddpm ancestral and the DDPM VLB: clamp x̂₀ to [-1, 1] (improved-diffusion)
    s.predictor = "reverse_diffusion"
    s.corrector = "langevin"
    s.snr = 0.16
    s.n_corrector_steps = 1
    s.ode_method = "dopri5"
    s.rtol = 1e-5
    s.atol = 1e-5
    s.order = 3
    s.rho = 7.0
    s.data_diameter = 0.0  # fast: > 0 gives the data diameter (else the scale is probed at σ_max)
    s.batch_size = 64  # also the chunk of --mode=sample: sample i depends on (seed, i, batch_size), not on processes
    s.n_samples = 64
    s.guidance = "none"  # none | classifier | cfg
    s.guidance_scale = 1.0
    s.guidance_convention = "auto"  # classifier guidance scale: auto | mean (ancestral mean, guided-diffusion
    # condition_mean) | score (condition_score); auto: mean for method ddpm, score otherwise, as guided-diffusion
    s.class_label = -1  # -1: random labels for class-conditional models
    s.checkpoint = ""  # a checkpoint path (default: the newest in WORKDIR/checkpoints)

    c.optim = o = ConfigDict()
    o.optimizer = "adam"
    o.lr = 1e-4
    o.beta1 = 0.9
    o.beta2 = 0.999
    o.eps = 1e-8
    o.weight_decay = 0.0
    o.warmup = 0
    o.grad_clip = -1.0  # <= 0: no clipping

    c.eval = e = ConfigDict()
    e.n_samples = 1000
    e.batch_size = 250  # sampling batch (= chunk) of --mode=eval, and the likelihood's batch
    e.metrics = ("fid", "kid", "is")  # the ones the data allows are computed
    e.inception_path = ""  # pt_inception-2015-12-05 weights (or $SCORELIB_INCEPTION)
    # FID/KID reference file, read-only: pytorch-fid's .npz (mu, sigma), score_sde's cifar10_stats.npz (pool_3)
    # or ADM's VIRTUAL_*.npz (mu/sigma or arr_0 images); "": statistics of eval.reference_split, cached in WORKDIR/eval
    e.stats_path = ""
    e.reference_split = "train"  # train | test: the split whose statistics are the reference (papers: train)
    e.reference_count = 0  # 0: all of that split (comparable with papers); > 0: its first N images
    e.likelihood = False
    e.likelihood_batches = 4
    e.likelihood_rtol = 1e-5
    e.exact_trace = False

    c.classifier = k = ConfigDict()  # ADM noisy classifier (classifier guidance)
    k.nf = 128
    k.ch_mult = (1, 2, 2, 2)
    k.num_res_blocks = 2
    k.attn_resolutions = (16, 8)
    k.num_head_channels = 64
    k.pool = "attention"
    k.workdir = ""  # its run directory or checkpoint, or a guided-diffusion classifier .pt (sampling with guidance)
    return c


def merged(stored: dict) -> ConfigDict:
    """A stored config (a plain dict, e.g. from JSON) laid over `base()`: unknown fields are kept,
    missing ones get their defaults."""
    out = base()

    def lay(target: ConfigDict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and key in target and isinstance(target[key], ConfigDict):
                lay(target[key], value)
            else:
                with target.ignore_type():
                    target[key] = value

    lay(out, stored)
    return out


def config_from_json(text: str, source: str | Path) -> ConfigDict:
    """A stored config (JSON text from `source`), laid over the current defaults (`merged`)."""
    try:
        stored = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{source}: the config is not valid JSON ({e})") from e
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: the config is not a JSON object")
    return merged(stored)


class NoGetConfig(AttributeError):
    """A config file without a get_config() function."""


def run_config_file(path: Path, arg: str | None = None) -> Any:
    """What the config file at `path` returns from `get_config()` (`get_config(arg)` when `arg` is given),
    run with `REPO_ROOT` importable, since configs/*.py start from `configs.default`. The file's own
    exceptions propagate; a file without get_config() raises NoGetConfig."""
    spec = importlib.util.spec_from_file_location(f"_scorelib_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO_ROOT))
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise NoGetConfig(f"{path}: the config file has no get_config()")
        return module.get_config() if arg is None else module.get_config(arg)
    finally:
        sys.path.remove(str(REPO_ROOT))
