"""Records tests/data/torch_fidelity_isc.json from torch-fidelity's own Inception Score (not run by the tests).

Usage, outside the repository, with a checkout of toshas/torch-fidelity:
    python torch_fidelity_isc.py /path/to/torch-fidelity out.json

torch_fidelity/metric_isc.py `isc_features_to_metric(logits, splits, shuffle, rng_seed=2020)` (the chunking of
Salimans et al.'s inception_score.py: rows i·N//splits to (i+1)·N//splits) on logits 3·randn(N, K) from a
seeded torch generator (float64), for N not divisible by the number of splits. Only that module is loaded: the
package's __init__ (feature extractors, torchvision) is replaced by a bare package and its two helper modules
by the names it imports.
"""

import json
import sys
import types

import torch


def load_metric_isc(root):
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [f"{root}/torch_fidelity"]
    sys.modules["torch_fidelity"] = package
    helpers = types.ModuleType("torch_fidelity.helpers")
    helpers.get_kwarg, helpers.vprint = (lambda *a, **k: None), (lambda *a, **k: None)
    utils = types.ModuleType("torch_fidelity.utils")
    for name in ("extract_featuresdict_from_input_id_cached", "create_feature_extractor",
                 "resolve_feature_extractor", "resolve_feature_layer_for_metric"):
        setattr(utils, name, None)
    sys.modules["torch_fidelity.helpers"], sys.modules["torch_fidelity.utils"] = helpers, utils
    import torch_fidelity.metric_isc as isc

    return isc


def main():
    isc = load_metric_isc(sys.argv[1])
    cases = []
    for n, k, splits, shuffle in [(95, 7, 10, False), (95, 7, 10, True), (101, 12, 10, False), (1003, 10, 10, False),
                                  (23, 5, 4, False), (50, 4, 10, False)]:
        seed = len(cases)
        logits = 3.0 * torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        out = isc.isc_features_to_metric(logits, splits=splits, shuffle=shuffle, rng_seed=2020)
        cases.append({"n": n, "k": k, "seed": seed, "splits": splits, "shuffle": shuffle,
                      "mean": out[isc.KEY_METRIC_ISC_MEAN], "std": out[isc.KEY_METRIC_ISC_STD]})
    with open(sys.argv[2], "w") as f:
        json.dump({"source": "toshas/torch-fidelity torch_fidelity/metric_isc.py isc_features_to_metric; recorded by "
                             "tests/data/recorders/torch_fidelity_isc.py", "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
