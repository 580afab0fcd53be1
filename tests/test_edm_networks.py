"""EDM's SongUNet and DhariwalUNet as scorelib's NCSNpp and ADMUNet (scorelib.models.edm).

Golden numbers (tests/data/edm/edm_nets_golden.pt): EDM's training/networks.py `SongUNet` /
`DhariwalUNet` built on CPU with the arguments below, every parameter (and the Fourier frequencies)
replaced, in sorted key order, by draws of `torch.Generator().manual_seed(500)`: randn / √fan_in for
tensors of rank ≥ 2, 0.3·randn for vectors (EDM's zero-initialised layers would hide the network).
Recorded: the key list with shapes, seeded inputs, noise labels (positional: 0.25, 250.7, 999;
Fourier: -6.5, 0.2, 3.9), one-hot class labels, augmentation labels and the output F. The test draws
the same weights from the key list, maps them with scorelib's key tables and compares F.

tests/data/edm/edm_published_keys.json.gz: the state_dict keys, shapes and parameter counts of EDM's
released configurations (train.py presets of the README's table), EDM's networks built on the meta device.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from scorelib.models import edm
from scorelib.models.adm import ADMUNet
from scorelib.models.layers import timestep_embedding
from scorelib.models.ncsnpp import NCSNpp

DATA = Path(__file__).parent / "data" / "edm"
GOLDEN = torch.load(DATA / "edm_nets_golden.pt", weights_only=True)
PUBLISHED = json.loads(gzip.decompress((DATA / "edm_published_keys.json.gz").read_bytes()))


def seeded_state(keys, seed=500):
    """The golden run's weights: per key in order, randn/√fan_in (rank ≥ 2) or 0.3·randn."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in keys:
        if key.endswith("resample_filter"):
            continue
        w = torch.randn(tuple(shape), generator=g)
        out[key] = w / math.sqrt(max(1, math.prod(shape[1:]))) if len(shape) >= 2 else w * 0.3
    return out


def scorelib_network(cls, kw, state):
    if cls == "SongUNet":
        net = NCSNpp(**edm.songunet_kwargs(**kw))
        net.load_state_dict(edm.convert_songunet_state(state, target=net, **kw))
    else:
        net = ADMUNet(**edm.dhariwalunet_kwargs(**kw))
        net.load_state_dict(edm.convert_dhariwalunet_state(state, target=net, **kw))
    return net.eval()


@pytest.mark.parametrize("name", list(GOLDEN))
def test_network_equals_edm_with_mapped_weights(name):
    """DDPM++ / NCSN++ (positional / Fourier noise embedding, standard / skip / residual encoders,
    standard / skip decoders, [1,1] / [1,3,3,1] filters, odd channel_mult_noise/emb) and ADM with
    two-head attention, class and augmentation labels: EDM's output to 1e-5 relative."""
    case = GOLDEN[name]
    net = scorelib_network(case["cls"], dict(case["kw"]), seeded_state(case["keys"]))
    with torch.no_grad():
        out = net(case["x"], case["labels"], y=case["y"], augment_labels=case["augment_labels"])
    err = (out - case["F"]).abs().max() / case["F"].abs().max()
    assert float(err) < 1e-5


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configurations_parameter_counts_and_keys(name):
    """Every released EDM network (EDM_CONFIGS): scorelib's network has EDM's parameter count and every
    EDM state_dict key maps onto a scorelib key of the same shape (checked on the meta device)."""
    pub = PUBLISHED[name]
    arch = edm.released_architecture("edm-" + name)
    assert arch.precond == "edm"  # config F: EDM's train.py --precond defaults to edm (README's option table)
    net = edm.build_network(arch.network, arch.network_kwargs, "meta")
    assert sum(p.numel() for p in net.parameters()) == pub["n_params"]
    cfg = dict(edm.EDM_CONFIGS["edm-" + name])
    res, ch = cfg.pop("img_resolution"), cfg.pop("img_channels")
    model_kwargs = {k: v for k, v in cfg.items() if k not in ("precond", "model_type")}
    state = {k: torch.empty(shape, device="meta") for k, shape in pub["keys"]}
    convert = edm.convert_songunet_state if arch.network == "ncsnpp" else edm.convert_dhariwalunet_state
    converted = convert(state, res, ch, ch, target=net, **model_kwargs)
    assert set(converted) == set(net.state_dict())


def test_published_parameter_counts_are_the_papers():
    """EDM's sizes: DDPM++ / NCSN++ CIFAR-10 56M, 64x64 62M / 63M, ADM ImageNet-64 296M."""
    counts = {k: v["n_params"] for k, v in PUBLISHED.items()}
    assert counts["cifar10-32x32-cond-vp"] == 55_735_299 and counts["cifar10-32x32-uncond-ve"] == 56_397_827
    assert counts["ffhq-64x64-uncond-vp"] == 61_805_571 and counts["afhqv2-64x64-uncond-ve"] == 62_761_091
    assert counts["imagenet-64x64-cond-adm"] == 295_899_267


def test_a_key_that_does_not_map_is_an_error():
    case = GOLDEN["song_skip"]
    kw = dict(case["kw"])
    state = seeded_state(case["keys"])
    with pytest.raises(ValueError, match="no scorelib counterpart"):
        edm.convert_songunet_state({**state, "enc.8x8_block0.extra.weight": torch.zeros(1)}, **kw)
    state.pop("map_layer0.weight")
    with pytest.raises(ValueError, match="not filled"):
        edm.convert_songunet_state(state, **kw)


def test_class_labels_index_k_is_the_zero_label_vector():
    """scorelib's convention: y = int64 indices; y = K (or None) is EDM's all-zero label vector, which
    leaves only map_label's bias in the embedding."""
    case = GOLDEN["song_ddpmpp_like"]
    net = scorelib_network(case["cls"], dict(case["kw"]), seeded_state(case["keys"]))
    x, t = case["x"], case["labels"]
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, y=None), net(x, t, y=torch.full((3,), 10)))
        bias_only = net.temb_mlp(timestep_embedding(t, net.noise_channels) + net.label_emb.bias)
        torch.testing.assert_close(net.embed_time(t, y=None), bias_only)
    with pytest.raises(ValueError, match="int64 class indices"):
        net(x, t, y=torch.eye(10)[:3])


def test_dhariwal_label_dropout_gives_a_zero_null_row():
    """A DhariwalUNet trained with label dropout: the null label K is EDM's zero label vector (a zero row)."""
    case = GOLDEN["adm_attn"]
    kw = {**case["kw"], "label_dropout": 0.1}
    args = edm.dhariwalunet_kwargs(**kw)
    assert args["null_label"] and args["num_classes"] == 3 and args["class_dropout"] == 0.1
    net = scorelib_network("DhariwalUNet", kw, seeded_state(case["keys"]))
    assert net.label_emb.weight.shape[0] == 4 and not net.label_emb.weight[3].any()
    x, t = case["x"], case["labels"]
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, y=None), net(x, t, y=torch.full((3,), 3)))
