"""Records tests/data/guided_ddim.json from guided-diffusion's own `ddim_sample_loop` (not run by the tests).

Usage, outside the repository, with a checkout of openai/guided-diffusion (gaussian_diffusion.py and
respace.py import only numpy and torch):  python guided_ddim.py /path/to/guided-diffusion out.json

A `SpacedDiffusion` (respace.py) over a cosine schedule of T = 200 steps, kept timesteps
`space_timesteps(200, "15")`, FIXED_SMALL, ε-prediction, rescale_timesteps=False (the networks see the
original timestep). The ε-network is a 2-D Gaussian mixture's exact ε in x_t coordinates; the classifier is a
fixed linear-in-x_t logit model and `cond_fn` is scripts/classifier_sample.py's (scale · ∇ log softmax[y]).
The run is float64: x_T is given as float64 and `_extract_into_tensor` is patched to keep the float64 tables
(the reference casts them to float32). Per step noise is `th.randn_like` after `torch.manual_seed(seed)`.
"""

import json
import sys

import numpy as np
import torch

sys.path.insert(0, sys.argv[1])
from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import SpacedDiffusion, space_timesteps

F64 = torch.float64
T = 200
MEANS = torch.tensor([[1.4, -0.6], [-1.1, 1.3], [0.2, 0.4]], dtype=F64)
STDS = torch.tensor([0.3, 0.25, 0.5], dtype=F64)
WEIGHTS = torch.tensor([0.4, 0.35, 0.25], dtype=F64)
W_CLS = torch.tensor([[1.0, -2.0], [-1.5, 0.5], [0.3, 1.7]], dtype=F64)
ABAR = torch.from_numpy(np.cumprod(1 - gd.get_named_beta_schedule("cosine", T)))


def _extract_f64(arr, timesteps, broadcast_shape):
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].to(F64)
    while len(res.shape) < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)


gd._extract_into_tensor = _extract_f64


def mixture_eps(x_t, t):
    """-√(1-ᾱ) ∇ log Σ_k w_k N(x_t; √ᾱ μ_k, (ᾱ v_k + 1 - ᾱ) I), x_t [B, 2], t int64 [B]."""
    a = ABAR[t]
    m, s2 = a.sqrt(), 1 - a
    var = m[:, None] ** 2 * STDS[None] ** 2 + s2[:, None]
    diff = m[:, None, None] * MEANS[None] - x_t[:, None]
    logp = torch.log(WEIGHTS)[None] - (diff**2).sum(-1) / (2 * var) - torch.log(var)
    r = torch.softmax(logp, dim=1)
    return -s2.sqrt()[:, None] * (r[..., None] * diff / var[..., None]).sum(1)


class EpsNet(torch.nn.Module):
    def forward(self, x, t):
        return mixture_eps(x, t)


def classifier(x_t, t):
    """Logits [B, 3] of a noisy classifier."""
    return x_t @ W_CLS.T * (1 + t.to(F64)[:, None] / T) + torch.tensor([0.1, -0.2, 0.05], dtype=F64)


def make_cond_fn(y, scale):
    def cond_fn(x, t):  # guided-diffusion scripts/classifier_sample.py
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale
    return cond_fn


def main():
    kept = sorted(space_timesteps(T, "15"))
    diffusion = SpacedDiffusion(kept, betas=gd.get_named_beta_schedule("cosine", T),
                                model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.FIXED_SMALL,
                                loss_type=gd.LossType.MSE, rescale_timesteps=False)
    B, cases = 8, []
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for clip in (False, True):
        for guided in (False, True):
            for eta in (0.0, 0.5, 1.0):
                seed = len(cases) + 1
                x_T = torch.randn(B, 2, generator=torch.Generator().manual_seed(100 + seed), dtype=F64)
                torch.manual_seed(seed)
                cond_fn = make_cond_fn(y, 2.5) if guided else None
                out = diffusion.ddim_sample_loop(EpsNet(), (B, 2), noise=x_T, clip_denoised=clip, cond_fn=cond_fn,
                                                 device="cpu", model_kwargs={}, eta=eta)
                cases.append({"clip_denoised": clip, "guided": guided, "eta": eta, "seed": seed,
                              "x_T_seed": 100 + seed, "B": B, "sample": out.tolist()})
    out = {"source": "openai/guided-diffusion gaussian_diffusion.py ddim_sample_loop (SpacedDiffusion, float64 "
                     "tables); recorded by tests/data/recorders/guided_ddim.py",
           "T": T, "schedule": "cosine", "kept_timesteps": kept, "means": MEANS.tolist(), "stds": STDS.tolist(),
           "weights": WEIGHTS.tolist(), "classifier_weight": W_CLS.tolist(), "classifier_bias": [0.1, -0.2, 0.05],
           "labels": y.tolist(), "guidance_scale": 2.5, "cases": cases}
    with open(sys.argv[2], "w") as f:
        f.write("{" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in out.items() if k != "cases"))
        f.write(',\n"cases": [\n' + ",\n".join(json.dumps(c) for c in cases) + "\n]}\n")


if __name__ == "__main__":
    main()
