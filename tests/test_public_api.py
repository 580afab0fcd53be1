"""The public API is a contract (docs/design.md, "Public API"): every name other projects import from the
top-level package is there, and `import scorelib` loads the core only (no configs, no experiment layer)."""

from __future__ import annotations

import subprocess
import sys

import scorelib

CONTRACT = (
    "geometric_sigmas karras_sigmas linear_betas cosine_betas vp_sigmas EpsToScore ScoreToEps annealed_langevin "
    "ddim ddpm_ancestral probability_flow fast_sample log_likelihood save load timesteps_to_sigmas "
    "respace_timesteps space_timesteps EDMPrecond VPPrecond VEPrecond IDDPMPrecond EDM2Precond edm_loss edm2_loss "
    "PowerEMA posthoc_ema AutoGuidance ClassifierFreeGuidance ClassifierGuidance guidance_interval experiment "
    "heun dpm_solver_pp unipc pc_sampler dsm_loss eps_loss hybrid_loss vlb_loss GaussianMixture"
).split()


def test_every_contract_name_is_exported() -> None:
    missing = [n for n in CONTRACT if not hasattr(scorelib, n)]
    assert not missing, missing
    assert set(CONTRACT) - {"save", "load", "experiment"} <= set(scorelib.__all__)


def test_import_scorelib_loads_the_core_only() -> None:
    code = ("import sys, scorelib; bad = [m for m in sys.modules if m.startswith(('scorelib.builder', "
            "'scorelib.cli', 'scorelib.train', 'scorelib.tasks', 'configs', 'ml_collections', 'absl'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
