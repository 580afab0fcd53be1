"""Records tests/data/k_diffusion_dpmpp.json from k-diffusion's own samplers (not run by the tests).

Usage, outside the repository, where k-diffusion 0.1.1.post1 is importable (`pip install --no-deps
k-diffusion==0.1.1.post1 torchsde trampoline`; torchvision, which only its utils module imports, is stood in
for):  python k_diffusion_dpmpp.py out.json

k_diffusion/sampling.py `sample_dpmpp_3m_sde(eta=0)` (DPM-Solver++(3M), deterministic) and `sample_dpmpp_2m`
in float64 (torch's default dtype) on a 2-D Gaussian mixture's exact denoiser, on `get_sigmas_karras` grids
and geometric grids, each ending in 0; x = σ_max · randn from a seeded generator.
"""

import importlib
import importlib.util
import json
import math
import sys
import types

import torch

torch.set_default_dtype(torch.float64)


def load_sampling():
    """k_diffusion.sampling without the package's __init__ (which imports its training dependencies)."""
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(importlib.util.find_spec("k_diffusion").submodule_search_locations)
    sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling")


K = load_sampling()
MEANS = torch.tensor([[1.0, -0.5], [-1.2, 0.8], [0.3, 1.5]])
STDS = torch.tensor([0.3, 0.2, 0.4])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


def denoiser(x, sigma):
    """E[x₀ | x] of Σ_k w_k N(μ_k, v_k I) at noise σ [B]: x + σ² ∇ log p_σ."""
    var = STDS[None] ** 2 + sigma[:, None] ** 2
    diff = MEANS[None] - x[:, None]
    logp = torch.log(WEIGHTS)[None] - (diff**2).sum(-1) / (2 * var) - torch.log(var)
    r = torch.softmax(logp, dim=1)
    return x + sigma[:, None] ** 2 * (r[..., None] * diff / var[..., None]).sum(1)


def main():
    grids = {"karras10": K.get_sigmas_karras(10, 0.002, 80.0), "karras4": K.get_sigmas_karras(4, 0.01, 20.0),
             "geometric6": K.append_zero(torch.exp(torch.linspace(math.log(40.0), math.log(0.01), 6))),
             "geometric2": K.append_zero(torch.tensor([5.0, 0.5]))}
    cases = []
    for sampler in ("dpmpp_3m_sde", "dpmpp_2m"):
        for name, grid in grids.items():
            seed = len(cases)
            x = grid[0] * torch.randn(8, 2, generator=torch.Generator().manual_seed(seed))
            if sampler == "dpmpp_3m_sde":
                out = K.sample_dpmpp_3m_sde(denoiser, x, grid, eta=0.0, noise_sampler=lambda s, t: None, disable=True)
            else:
                out = K.sample_dpmpp_2m(denoiser, x, grid, disable=True)
            cases.append({"sampler": sampler, "grid_name": name, "grid": grid.tolist(), "seed": seed,
                          "out": out.tolist()})
    data = {"source": "crowsonkb/k-diffusion 0.1.1.post1 k_diffusion/sampling.py sample_dpmpp_3m_sde(eta=0), "
                      "sample_dpmpp_2m (float64); recorded by tests/data/recorders/k_diffusion_dpmpp.py",
            "means": MEANS.tolist(), "stds": STDS.tolist(), "weights": WEIGHTS.tolist(), "cases": cases}
    with open(sys.argv[1], "w") as f:
        f.write("{" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in data.items() if k != "cases"))
        f.write(',\n"cases": [\n' + ",\n".join(json.dumps(c) for c in cases) + "\n]}\n")


if __name__ == "__main__":
    main()
