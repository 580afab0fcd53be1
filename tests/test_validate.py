"""scorelib.validate in-process: every shipped config passes, every rule rejects what it should with a
message naming the field, resume checks compare the stored network, warnings name ignored fields.
(tests/test_bad_input_cli.py sends the mistakes through the real CLI.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from cli_helpers import ROOT, run_main
from oracles import mixture

from scorelib import validate
from scorelib.builder import ConfigError, experiment
from scorelib.builder.configs import with_overrides
from scorelib.builder.fields import SECTIONS, base, check_fields
from scorelib.builder.samplers import FAST_DEFAULT_NFE
from scorelib.checkpoint import config_to_json, save_checkpoint

CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "default"))


def load(name: str):
    import sys

    sys.path.insert(0, str(ROOT))
    try:
        module = __import__(f"configs.{name}", fromlist=["get_config"])
    finally:
        sys.path.pop(0)
    return module.get_config()


def set_fields(config, **fields):
    return with_overrides(config, {k.replace("__", "."): v for k, v in fields.items()})


def check_config(config, mode="train"):
    """Validation is building: the experiment, then what it builds on the meta device."""
    exp = experiment(config, mode=mode)
    validate.check_buildable(exp)
    return exp


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_passes_without_warnings(name):
    config = load(name)
    modes = ("sample", "bench") if name == "openai" else ("train", "bench")  # openai: released models to sample
    for mode in modes:
        check_config(config, mode)
    assert validate.ignored_fields(experiment(config, mode=modes[0])) == []


def test_every_published_preset_passes_for_sampling():
    from scorelib.presets import OPENAI_PRESETS, openai_config

    for name, flags in OPENAI_PRESETS.items():
        config = openai_config(flags)
        check_config(config, "sample")
        assert validate.ignored_fields(experiment(config, mode="sample")) == [], name
    with pytest.raises(ConfigError, match=r"training\.loss: 'dsm' does not fit noise\.kind='ddpm'"):
        check_config(openai_config(OPENAI_PRESETS["cifar10_uncond"]), "train")  # no loss in the preset


def test_every_rule_names_a_default_field_and_accepts_the_default():
    defaults = base()
    for section, fields in SECTIONS.items():
        for name, f in fields.items():
            value = defaults[section][name] if section else defaults[name]  # every declaration is a default
            assert f.rule[0](value), (section, name, value, f.rule[1])


@pytest.mark.parametrize("field,value,message", [
    ("training.batch_size", 0, "training.batch_size: 0 is not allowed (> 0)"),
    ("training.log_freq", -5, "training.log_freq: -5 is not allowed (> 0)"),
    ("noise.sigma_min", math.inf, "noise.sigma_min: inf is not allowed (> 0)"),
    ("optim.beta2", 1.0, "optim.beta2: 1 is not allowed (0 <= value < 1)"),
    ("noise.num_scales", 0, "noise.num_scales: 0 is not allowed (>= 1)"),
    ("sampling.class_label", -2, "sampling.class_label: -2 is not allowed (>= -1)"),
    ("model.ch_mult", (1, 0), "model.ch_mult: (1, 0) is not allowed (each > 0)"),
    ("eval.metrics", ("fid", "lpips"),
     "eval.metrics: ('fid', 'lpips') is not allowed (each one of: fid, kid, is, digits_fid)"),
    ("model.num_head_channels", 0, "model.num_head_channels: 0 is not allowed (> 0, or -1)"),
    ("model.ema_rate", 1.5, "model.ema_rate: 1.5 is not allowed (0 <= value <= 1)"),
    ("sampling.predictor", "heun", "sampling.predictor: 'heun' is not allowed (one of: reverse_diffusion, "
                                   "euler_maruyama, ancestral, none)"),
])
def test_range_rules(field, value, message):
    with pytest.raises(ConfigError) as e:
        check_fields(set_fields(base(), **{field.replace(".", "__"): value}))
    assert str(e.value) == message


def test_types_are_those_of_the_defaults():
    c = base()
    with c.unlocked(), c.ignore_type():
        c.training.batch_size = "64"
    with pytest.raises(ConfigError, match=r"^training\.batch_size: '64' is a str \(an int\)$"):
        check_fields(c)
    c = base()
    with c.ignore_type():
        c.sampling.denoise = 1
    with pytest.raises(ConfigError, match=r"^sampling\.denoise: 1 is a int \(a bool\)$"):
        check_fields(c)
    c = base()
    c.noise.sigma_max = 50  # an int where a float is expected is fine
    c.model.ch_mult = [1, 2]  # a list where a tuple is expected too
    check_fields(c)


def test_unknown_fields_and_sections_are_errors_with_suggestions():
    c = base()
    c.sampling.n_step = 10  # a config file typo: base() is not locked, the validator catches it
    with pytest.raises(ConfigError, match=r"^sampling\.n_step: unknown config field \(did you mean "
                                                r"sampling\.n_steps"):
        check_fields(c)
    c = base()
    c.sampler = {"method": "ddim"}
    with pytest.raises(ConfigError, match=r"^sampler: unknown config field \(did you mean sampling\?"):
        check_fields(c)


@pytest.mark.parametrize("name,fields,message", [
    ("toy_gmm", {"noise__sigma_max": 0.005}, "noise.sigma_max: 0.005 is not above noise.sigma_min=0.01"),
    ("ddpm_cifar", {"noise__beta_end": 1e-5}, "noise.beta_end: 1e-05 is not above noise.beta_start=0.0001"),
    ("ddpmpp_cifar", {"noise__beta_max": 0.05}, "noise.beta_max: 0.05 is not above noise.beta_min=0.1"),
    ("ncsn_cifar", {"noise__kind": "ve_continuous"}, "noise.kind: 've_continuous' does not fit model.name='ncsn'"),
    ("ddpm_cifar", {"noise__kind": "ve"}, "noise.kind: 've' does not fit model.name='ddpm' (an ε network)"),
    ("ncsnv2_cifar", {"model__learn_sigma": True}, "model.learn_sigma: model.name='ncsnv2' has no learned variance"),
    ("ddpm_cifar", {"model__ch_mult": (1, 2, 2, 2, 2, 2, 2)}, "model.ch_mult: 7 levels halve data.image_size=32"),
    ("adm_cifar", {"training__target": "classifier", "classifier__attn_resolutions": (3,)},
     "classifier.attn_resolutions: 3 not among"),
    ("toy_gmm", {"model__name": "ncsnv2"}, "model.name: 'ncsnv2' does not fit data.dataset='toy'"),
    ("ncsn_mnist", {"data__channels": 3}, "data.channels: 3 does not fit data.dataset='mnist' (1)"),
    ("ncsn_digits", {"data__image_size": 16}, "data.image_size: 16 does not fit data.dataset='digits' (8)"),
    ("ddpm_cifar", {"training__target": "classifier", "data__num_classes": 0},
     "data.num_classes: 0: training.target='classifier' needs labelled data"),
    ("adm_cifar", {"model__class_dropout": 0.0}, "sampling.guidance: 'cfg' needs a class-conditional model trained"),
    ("ncsnpp_cifar", {"sampling__guidance": "classifier"}, "sampling.guidance: 'classifier' needs noise.kind='ddpm'"),
    ("iddpm_cifar", {"sampling__method": "ddim", "sampling__n_steps": 4001}, "sampling.n_steps: 4001 is more than"),
])
def test_cross_field_rules(name, fields, message):
    with pytest.raises(ConfigError) as e:
        experiment(set_fields(load(name), **fields), mode="train")
    assert str(e.value).startswith(message), str(e.value)


def test_a_value_the_constructors_reject_is_a_config_error_naming_the_section():
    c = set_fields(load("adm_cifar"), model__nf=100)  # GroupNorm(32) needs a multiple of 32
    with pytest.raises(ConfigError, match=r"^model: the adm network cannot be built: .*got 100"):
        check_config(c, "train")
    c = set_fields(load("ddpm_cifar"), sampling__n_steps=600, sampling__spacing="quadratic")
    with pytest.raises(ConfigError, match=r"^sampling: the σ grid cannot be built: .*repeats timesteps"):
        check_config(c, "sample")


def test_workdir_checks(tmp_path):
    validate.check_workdir(tmp_path / "new" / "deeper")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'f'}: the workdir is a file"):
        validate.check_workdir(tmp_path / "f")
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'f' / 'run'}: the workdir cannot be created, "
                                                f"{tmp_path / 'f'} is a file"):
        validate.check_workdir(tmp_path / "f" / "run")


def _fake_run(workdir: Path, config) -> None:
    """A checkpoint holding the config (stored_config reads only that)."""
    save_checkpoint(workdir / "checkpoints" / "checkpoint_00000005.pt",
                    {"model": {}, "step": 5, "config": config_to_json(config)})


def test_resume_compares_the_stored_network_before_any_weights_are_read(tmp_path):
    toy = load("toy_gmm")
    _fake_run(tmp_path, toy)
    validate.check_resume(toy, tmp_path)
    # optimiser, sampler and EMA settings may change between runs; the network's shapes may not
    validate.check_resume(set_fields(toy, optim__lr=1e-4, model__ema_rate=0.9, sampling__method="ode"), tmp_path)
    with pytest.raises(ConfigError) as e:
        validate.check_resume(set_fields(toy, model__nf=64, model__num_res_blocks=2), tmp_path)
    assert str(e.value).startswith(f"{tmp_path}: its checkpoints hold a different network (model.nf=128 there, "
                                   "64 now, model.num_res_blocks=3 there, 2 now)")
    assert f"use a new --workdir, e.g. {tmp_path}-2" in str(e.value)
    (tmp_path / "checkpoints" / "checkpoint_00000009.pt").write_bytes(b"truncated")  # skipped as training does
    with pytest.raises(ConfigError, match=r"model\.nf=128 there"):
        validate.check_resume(set_fields(toy, model__nf=64), tmp_path)


def test_sample_modes_check_the_checkpoint_and_the_stored_model(tmp_path):
    toy = load("toy_gmm")
    with pytest.raises(ConfigError, match="checkpoints: no checkpoints"):
        check_run(toy, tmp_path, "sample")
    adm = set_fields(load("adm_cifar"), sampling__class_label=3)
    _fake_run(tmp_path, adm)
    check_run(adm, tmp_path, "sample")
    # the run samples the stored 10-class model, whatever the current config's model says
    with pytest.raises(ConfigError, match=r"sampling\.class_label: 12 is not a class of this 10-class model"):
        check_run(set_fields(load("ddpm_cifar"), sampling__class_label=12), tmp_path, "eval")
    with pytest.raises(ConfigError, match=f"sampling.checkpoint: {tmp_path / 'x.pt'} does not exist"):
        check_run(set_fields(toy, sampling__checkpoint=str(tmp_path / "x.pt")), tmp_path, "likelihood")


def check_run(config, workdir, mode):
    return validate.check(experiment(config, workdir, mode), config, workdir)


def test_ignored_fields_get_one_warning_each():
    toy = load("toy_gmm")  # ald on NCSN levels: reads n_steps_each, step_lr, denoise, not the grid fields
    warnings = validate.ignored_fields(experiment(set_fields(toy, sampling__n_steps=10), mode="train"),
                                       ["sampling.n_steps", "sampling.step_lr", "sampling.eta"], quick=True)
    assert warnings == [
        "sampling.n_steps is ignored by sampling.method='ald' (it reads denoise, n_steps_each, step_lr)",
        "sampling.eta is ignored by sampling.method='ald' (it reads denoise, n_steps_each, step_lr)",
        "--quick is ignored by --mode=train (it selects the small grid of --mode=bench)"]
    ddim = set_fields(toy, sampling__method="ddim")
    assert validate.ignored_fields(experiment(ddim, mode="sample"), ["sampling.n_steps", "sampling.eta"]) == []
    assert validate.ignored_fields(experiment(ddim, mode="sample"),
                                   ["sampling.spacing", "training.n_iters", "training.threads"]) == [
        "sampling.spacing is ignored by sampling.method='ddim' (it reads clip_denoised, eta, n_steps)",
        "training.n_iters is ignored by --mode=sample"]
    assert validate.ignored_fields(experiment(set_fields(toy, sampling__class_label=2, sampling__guidance_scale=3.0),
                                              mode="sample"), ["sampling.guidance_scale"]) == [
        "sampling.guidance_scale is ignored with sampling.guidance='none'",
        "sampling.class_label=2 is ignored: the model is not class-conditional"]
    assert validate.ignored_fields(experiment(load("ddpm_cifar"), mode="sample"), ["sampling.spacing"]) == []


def test_fast_without_n_steps_gets_the_default_budget():
    toy = set_fields(load("toy_gmm"), sampling__method="fast", sampling__init="gaussian")
    assert toy.sampling.n_steps == 0 and experiment(toy).sampler.nfe == FAST_DEFAULT_NFE == 10
    gmm = mixture(d=2, k=3, seed=1)
    calls = []

    def score(x, sigma):
        calls.append(1)
        return gmm.score(x, sigma)

    x = experiment(toy).sampler(score, (64, 2), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert len(calls) == 10 and torch.isfinite(x).all()
    # annealed Langevin on a continuous SDE: n_steps=0 means noise.num_scales levels, like every grid
    cont = set_fields(load("toy_gmm"), noise__kind="ve_continuous")
    assert len(experiment(cont).sampler.grid) == cont.noise.num_scales == 20


def test_help_works_without_a_config():
    for flag in ("--help", "--helpfull"):
        r = run_main(flag, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "--config" in r.stdout and "--mode" in r.stdout and "toy_gmm" in r.stdout
