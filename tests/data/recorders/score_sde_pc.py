"""Records tests/data/score_sde_pc.json from score_sde's own PC sampler (not run by the tests).

Usage, outside the repository, with a checkout of yang-song/score_sde_pytorch (it imports only torch, numpy
and scipy for sampling):  python score_sde_pc.py /path/to/score_sde_pytorch out.json

score_sde's `get_pc_sampler` (sampling.py) runs in float64 (torch's default dtype) on a 2-D Gaussian mixture
whose exact score enters through its `get_score_fn` convention (models/utils.py): continuous=True, where a
VP / sub-VP model returns -std·score_t at label 999·t and a VE model the score at label σ(t); continuous=False
for VE, where the label is the level index (0 = σ_max). The prior draw and every step's noise come from
`torch.manual_seed(seed)`.
"""

import json
import sys

import torch

torch.set_default_dtype(torch.float64)
sys.path.insert(0, sys.argv[1])
import sampling  # noqa: E402
import sde_lib  # noqa: E402

MEANS = torch.tensor([[1.0, -0.5], [-1.2, 0.8], [0.3, 1.5]])
STDS = torch.tensor([0.3, 0.2, 0.4])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


def mixture_score(x, m, s):
    """∇ log Σ_k w_k N(x; m μ_k, (m² v_k + s²) I) for x [B, 2] and m, s [B] (x_t-space marginal)."""
    var = m[:, None] ** 2 * STDS[None] ** 2 + s[:, None] ** 2
    diff = m[:, None, None] * MEANS[None] - x[:, None]
    logp = torch.log(WEIGHTS)[None] - (diff**2).sum(-1) / (2 * var) - torch.log(var)
    r = torch.softmax(logp, dim=1)
    return (r[..., None] * diff / var[..., None]).sum(1)


class Model(torch.nn.Module):
    def __init__(self, sde, continuous):
        super().__init__()
        self.sde, self.continuous = sde, continuous

    def forward(self, x, labels):
        sde, flat = self.sde, x.reshape(x.shape[0], -1)
        if isinstance(sde, sde_lib.VESDE):
            sigma = labels if self.continuous else sde.discrete_sigmas[sde.N - 1 - labels]
            return mixture_score(flat, torch.ones_like(sigma), sigma).reshape(x.shape)
        t = labels / 999
        log_m = -0.25 * t**2 * (sde.beta_1 - sde.beta_0) - 0.5 * t * sde.beta_0
        std = sde.marginal_prob(torch.zeros_like(x), t)[1]
        return (-std[:, None] * mixture_score(flat, torch.exp(log_m), std)).reshape(x.shape)


def run(case, denoise):
    kind, N = case["kind"], case["N"]
    sde = {"vp": sde_lib.VPSDE(0.1, 20.0, N), "subvp": sde_lib.subVPSDE(0.1, 20.0, N),
           "ve": sde_lib.VESDE(0.01, 50.0, N)}[kind]
    pred = None if case["predictor"] == "none" else sampling.get_predictor(case["predictor"])
    corr = None if case["corrector"] == "none" else sampling.get_corrector(case["corrector"])
    fn = sampling.get_pc_sampler(sde, (case["B"], 2, 1, 1), pred, corr, lambda x: x, case["snr"],
                                 n_steps=case["n_corrector_steps"], continuous=case["continuous"], denoise=denoise,
                                 eps=case["eps"], device="cpu")
    torch.manual_seed(case["seed"])
    x, _ = fn(Model(sde, case["continuous"]))
    return x.reshape(case["B"], 2).tolist()


def main():
    cases, seed = [], 0
    for kind in ("vp", "subvp", "ve"):
        for predictor in ("euler_maruyama", "reverse_diffusion", "ancestral_sampling"):
            for corrector in ("none", "langevin", "ald"):
                seed += 1
                for n_steps in (1, 2) if corrector == "langevin" else (1,):
                    for continuous in (True, False) if kind == "ve" else (True,):
                        case = {"kind": kind, "predictor": predictor, "corrector": corrector,
                                "N": 7 if kind == "ve" else 30, "seed": seed, "B": 6, "n_corrector_steps": n_steps,
                                "snr": 0.16, "continuous": continuous, "eps": 1e-5 if kind == "ve" else 1e-3}
                        try:
                            case["x_mean"], case["x"] = run(case, True), run(case, False)
                        except Exception as e:  # score_sde refuses the combination
                            case["error"] = f"{type(e).__name__}: {e}"
                        cases.append(case)
    out = {"source": "yang-song/score_sde_pytorch sampling.py get_pc_sampler, sde_lib.py (float64); "
                     "recorded by tests/data/recorders/score_sde_pc.py",
           "means": MEANS.tolist(), "stds": STDS.tolist(), "weights": WEIGHTS.tolist(), "cases": cases}
    with open(sys.argv[2], "w") as f:
        f.write("{" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in out.items() if k != "cases"))
        f.write(',\n"cases": [\n' + ",\n".join(json.dumps(c) for c in cases) + "\n]}\n")


if __name__ == "__main__":
    main()
