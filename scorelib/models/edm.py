"""EDM's two architectures (Karras et al. 2022, App. F.2) as scorelib networks, and their weights.

EDM's `SongUNet` re-implements score_sde's DDPM++ / NCSN++ and its `DhariwalUNet` re-implements ADM;
scorelib's `NCSNpp` and `ADMUNet` are those same architectures, so an EDM network is one of them with
its constructor arguments translated (`songunet_kwargs`, `dhariwalunet_kwargs`) and its state_dict keys
renamed (`convert_songunet_state`, `convert_dhariwalunet_state`). The names on the EDM side are the
module names of EDM's training/networks.py (`map_noise`, `enc.32x32_block0`, ...), derived here from
the constructor arguments alone; the key tables are in the functions' docstrings.

EDM conventions kept by the translation (each pinned by tests/test_edm_networks.py):

* the wrappers pass their noise label c_noise (EDM Table 1) to the network, which embeds it as given:
  positional embedding with the endpoint included and [sin | cos] for SongUNet (score_sde's
  `timestep_embedding`), Fourier features of the label itself (`fourier_of_log=False`);
* class labels: scorelib passes int64 indices `y` [B]; EDM passes one-hot vectors. SongUNet's
  `map_label` (a Linear with bias on √K·onehot) becomes `NCSNpp.label_emb`; DhariwalUNet's (bias-free,
  on onehot) becomes the rows of `ADMUNet.label_emb` (an embedding table, the same parameters
  transposed). EDM's zero label vector ("no class": unlabelled evaluation, label dropout) is index K;
* augmentation labels [B, augment_dim] join the noise embedding before the MLP (`map_augment`);
* attention: EDM's fused qkv projection is laid out per head as [channel][q|k|v]; it is split into
  NCSN++'s separate q, k, v (one head) or permuted to ADM's per-head [q|k|v] rows. DhariwalUNet has
  64 channels per head and no attention where a level has fewer than 64 channels (C // 64 = 0 heads);
* GroupNorm with min(32, C // 4) groups (`ADMUNet(min_group_channels=4)`; NCSN++'s own rule is the same).

Published configurations (EDM's train.py presets, README table) are in `EDM_CONFIGS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from scorelib.models.adm import ADMUNet
from scorelib.models.ncsnpp import NCSNpp
from scorelib.utils import frozen

__all__ = [
    "DHARIWALUNET_DEFAULTS",
    "EDM_CONFIGS",
    "EDM_TRAINING",
    "NETWORK_KINDS",
    "PRECOND_DEFAULTS",
    "PRECOND_KINDS",
    "SONGUNET_DEFAULTS",
    "SONGUNET_VARIANTS",
    "EDMArchitecture",
    "build_network",
    "convert_dhariwalunet_state",
    "convert_songunet_state",
    "dhariwalunet_kwargs",
    "edm_architecture",
    "released_architecture",
    "songunet_kwargs",
]

# Constructor defaults of EDM's classes (training/networks.py): a snapshot records only the arguments
# that were passed, so the rest are filled from here.
SONGUNET_DEFAULTS = frozen(
    label_dim=0, augment_dim=0, model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4,
    attn_resolutions=(16,), dropout=0.10, label_dropout=0.0, embedding_type="positional", channel_mult_noise=1,
    encoder_type="standard", decoder_type="standard", resample_filter=(1, 1),
)
DHARIWALUNET_DEFAULTS = frozen(
    label_dim=0, augment_dim=0, model_channels=192, channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3,
    attn_resolutions=(32, 16, 8), dropout=0.10, label_dropout=0.0,
)
PRECOND_DEFAULTS = frozen(
    EDMPrecond=frozen(sigma_min=0.0, sigma_max=float("inf"), sigma_data=0.5),
    VPPrecond=frozen(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5),
    VEPrecond=frozen(sigma_min=0.02, sigma_max=100.0),
    iDDPMPrecond=frozen(C_1=0.001, C_2=0.008, M=1000),
)
# The DhariwalUNet attention width (EDM: channels_per_head=64; levels narrower than that have none).
_HEAD_CHANNELS = 64


@dataclass(frozen=True)
class EDMArchitecture:
    """An EDM network as scorelib builds it: `network` ("ncsnpp" | "adm") with `network_kwargs`
    (the `NCSNpp` / `ADMUNet` constructor arguments), wrapped in `precond` ("edm" | "vp" | "ve" |
    "iddpm") with `precond_kwargs` (the arguments of scorelib's `EDMPrecond` / `VPPrecond` /
    `VEPrecond` / `IDDPMPrecond`). Plain values only: a config can hold it."""

    network: str
    network_kwargs: Mapping[str, Any]
    precond: str
    precond_kwargs: Mapping[str, Any] = field(default_factory=dict)


PRECOND_KINDS = frozen(EDMPrecond="edm", VPPrecond="vp", VEPrecond="ve", iDDPMPrecond="iddpm")
NETWORK_KINDS = frozen(SongUNet="ncsnpp", DhariwalUNet="adm")


def edm_architecture(precond_class: str, precond_kwargs: Mapping[str, Any], model_class: str,
                     model_kwargs: Mapping[str, Any]) -> EDMArchitecture:
    """The scorelib architecture of EDM's `precond_class(**precond_kwargs)` around
    `model_class(**model_kwargs)` (model_kwargs with img_resolution, in_channels, out_channels, as EDM's
    wrappers pass them); EDM's defaults fill what is not given."""
    if precond_class not in PRECOND_KINDS:
        raise ValueError(f"not an EDM network: {precond_class} (expected one of {', '.join(PRECOND_KINDS)})")
    if model_class not in NETWORK_KINDS:
        raise ValueError(f"{precond_class} wraps {model_class}, not SongUNet / DhariwalUNet")
    kind = NETWORK_KINDS[model_class]
    net_kwargs = (songunet_kwargs if kind == "ncsnpp" else dhariwalunet_kwargs)(**model_kwargs)
    defaults = PRECOND_DEFAULTS[precond_class]
    return EDMArchitecture(kind, net_kwargs, PRECOND_KINDS[precond_class],
                           {k: precond_kwargs.get(k, v) for k, v in defaults.items()})


def released_architecture(name: str) -> EDMArchitecture:
    """The architecture of one of EDM's released models (`EDM_CONFIGS`), e.g. "edm-cifar10-32x32-cond-vp"."""
    cfg = dict(EDM_CONFIGS[name])
    precond, model_class = cfg.pop("precond"), cfg.pop("model_type")
    res, ch = cfg.pop("img_resolution"), cfg.pop("img_channels")
    out = 2 * ch if precond == "iDDPMPrecond" else ch
    return edm_architecture(precond, {}, model_class, dict(img_resolution=res, in_channels=ch, out_channels=out, **cfg))


def _full(defaults: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(kwargs) - set(defaults) - {"img_resolution", "in_channels", "out_channels"}
    if unknown:
        raise ValueError(f"EDM network arguments scorelib does not know: {sorted(unknown)}")
    return {**defaults, **kwargs}


def songunet_kwargs(img_resolution: int, in_channels: int, out_channels: int, **edm: Any) -> dict[str, Any]:
    """`NCSNpp` constructor arguments of EDM's `SongUNet(img_resolution, in_channels, out_channels, **edm)`.

    DDPM++ (positional embedding, standard encoder, [1, 1] filter) and NCSN++ (Fourier embedding,
    residual encoder, [1, 3, 3, 1] filter), with EDM's "skip" encoder / decoder as score_sde's
    input_skip / output_skip pyramids. A residual encoder needs a FIR filter (score_sde's form).
    """
    k = _full(SONGUNET_DEFAULTS, edm)
    if out_channels != in_channels:
        raise ValueError(f"SongUNet with {in_channels} input and {out_channels} output channels is not supported")
    taps = tuple(float(t) for t in k["resample_filter"])
    fir = taps != (1.0, 1.0)
    if k["encoder_type"] == "residual" and not fir:
        raise ValueError("a residual encoder with the [1, 1] filter has no score_sde counterpart")
    if len(taps) != 4 and fir:
        raise ValueError(f"resample_filter {list(taps)}: scorelib's FIR layers take four taps")
    return dict(
        image_size=img_resolution, in_channels=in_channels, nf=k["model_channels"],
        ch_mult=tuple(k["channel_mult"]), num_res_blocks=k["num_blocks"],
        attn_resolutions=tuple(k["attn_resolutions"]), dropout=float(k["dropout"]), resamp_with_conv=True,
        conditional=True, fir=fir, fir_kernel=taps if fir else (1, 3, 3, 1), skip_rescale=True,
        resblock_type="biggan",
        progressive={"standard": "none", "skip": "output_skip"}[k["decoder_type"]],
        progressive_input={"standard": "none", "skip": "input_skip", "residual": "residual"}[k["encoder_type"]],
        progressive_combine="sum", embedding_type=k["embedding_type"], fourier_scale=16.0, init_scale=0.0,
        scale_by_sigma=False, centered=True, fourier_of_log=False,
        noise_channels=k["model_channels"] * k["channel_mult_noise"], channel_mult_emb=k["channel_mult_emb"],
        label_dim=k["label_dim"], augment_dim=k["augment_dim"], class_dropout=float(k["label_dropout"]),
    )


def _adm_attention(edm: Mapping[str, Any], img_resolution: int) -> tuple[tuple[int, ...], bool]:
    """(attention resolutions that exist, middle attention) of a DhariwalUNet: EDM has C // 64 heads."""
    mc, mult = edm["model_channels"], edm["channel_mult"]
    res = []
    for level, m in enumerate(mult):
        r, c = img_resolution >> level, mc * m
        if r in edm["attn_resolutions"] and c // _HEAD_CHANNELS:
            if c % _HEAD_CHANNELS:
                raise ValueError(f"attention at {r}x{r} with {c} channels: heads of {_HEAD_CHANNELS} channels needed")
            res.append(r)
    c_last = mc * mult[-1]
    if c_last // _HEAD_CHANNELS and c_last % _HEAD_CHANNELS:
        raise ValueError(f"middle attention with {c_last} channels: heads of {_HEAD_CHANNELS} channels needed")
    return tuple(res), c_last >= _HEAD_CHANNELS


def dhariwalunet_kwargs(img_resolution: int, in_channels: int, out_channels: int, **edm: Any) -> dict[str, Any]:
    """`ADMUNet` constructor arguments of EDM's `DhariwalUNet(img_resolution, in_channels, out_channels, **edm)`:
    ADM with BigGAN up/down blocks, scale-shift norm and 64 channels per head; `learn_sigma` when the
    network has 2C outputs (EDM's iDDPM wrapper). A conditional network gets a null label ("no class",
    EDM's zero label vector, a zero row) when it was trained with label dropout."""
    k = _full(DHARIWALUNET_DEFAULTS, edm)
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"DhariwalUNet with {in_channels} inputs needs {in_channels} or {2 * in_channels} outputs")
    attn, middle = _adm_attention(k, img_resolution)
    dropout_labels = float(k["label_dropout"]) > 0
    return dict(
        image_size=img_resolution, in_channels=in_channels, model_channels=k["model_channels"],
        channel_mult=tuple(k["channel_mult"]), num_res_blocks=k["num_blocks"], attention_resolutions=attn,
        dropout=float(k["dropout"]), num_heads=1, num_head_channels=_HEAD_CHANNELS, use_scale_shift_norm=True,
        resblock_updown=True, learn_sigma=out_channels == 2 * in_channels,
        num_classes=k["label_dim"] or None, null_label=bool(k["label_dim"]) and dropout_labels,
        class_dropout=float(k["label_dropout"]) if k["label_dim"] else 0.0, augment_dim=k["augment_dim"],
        channel_mult_emb=k["channel_mult_emb"], min_group_channels=4, middle_attention=middle,
    )


# ---------------------------------------------------------------------------------------------
# state_dict key maps: EDM key -> [(scorelib key, value transform)]
# ---------------------------------------------------------------------------------------------

Transform = Callable[[Tensor], Tensor]
KeyMap = dict[str, list[tuple[str, Transform]]]  # EDM key -> its scorelib keys (q, k, v share one)


def _same(v: Tensor) -> Tensor:
    return v


def _layer(m: KeyMap, edm: str, ours: str, names: Sequence[str] = ("weight", "bias"),
           transform: Transform = _same) -> None:
    for n in names:
        m.setdefault(f"{edm}.{n}", []).append((f"{ours}.{n}", transform))


def _qkv_split(part: int) -> Transform:
    """Rows of one of q, k, v from EDM's single-head qkv layout (row 3c + j is channel c of q|k|v)."""
    return lambda v: v[part::3]


def _qkv_per_head(channels: int) -> Transform:
    """EDM's per-head [channel][q|k|v] rows -> ADM's per-head [q|k|v][channel] rows, as Conv1d weights."""
    heads, d = channels // _HEAD_CHANNELS, _HEAD_CHANNELS

    def permute(v: Tensor) -> Tensor:
        v = v.reshape(heads, d, 3, *v.shape[1:]).transpose(1, 2).reshape(3 * channels, *v.shape[1:])
        return v.reshape(v.shape[0], -1, 1) if v.ndim == 4 else v

    return permute


def _conv1d(v: Tensor) -> Tensor:
    """A 1x1 Conv2d weight [O, I, 1, 1] as a Conv1d weight [O, I, 1]."""
    return v.reshape(v.shape[0], v.shape[1], 1)


def _song_block(m: KeyMap, edm: str, ours: str, attn: str | None, has_skip: bool) -> None:
    """EDM UNetBlock (DDPM++ / NCSN++ form) -> ResnetBlockBigGANpp (+ AttnBlockpp)."""
    for e, o in (("norm0", "norm0"), ("conv0", "conv0"), ("affine", "temb_proj"), ("norm1", "norm1"),
                 ("conv1", "conv1")):
        _layer(m, f"{edm}.{e}", f"{ours}.{o}")
    if has_skip:
        _layer(m, f"{edm}.skip", f"{ours}.shortcut")
    if attn is not None:
        _layer(m, f"{edm}.norm2", f"{attn}.norm")
        for part, name in enumerate("qkv"):
            _layer(m, f"{edm}.qkv", f"{attn}.{name}", transform=_qkv_split(part))
        _layer(m, f"{edm}.proj", f"{attn}.proj_out")


def songunet_key_map(img_resolution: int, in_channels: int, out_channels: int, **edm: Any) -> KeyMap:
    """EDM SongUNet state_dict keys -> NCSNpp keys (EDM's `resample_filter` buffers have no entry).

    ===========================================  ====================================================
    EDM SongUNet                                 scorelib NCSNpp
    ===========================================  ====================================================
    map_noise.freqs                              fourier.W
    map_label / map_augment                      label_emb / augment_emb
    map_layer0 / map_layer1                      temb_mlp.0 / temb_mlp.2
    enc.{R}x{R}_conv                             conv_in
    enc.{r}x{r}_block{b}                         down.{level}.blocks.{b}
      its attention: norm2, qkv, proj            down.{level}.attns.{b}: norm, q | k | v, proj_out
    enc.{r}x{r}_down                             down.{level-1}.downsample
    enc.{r}x{r}_aux_residual / _aux_skip         down.{level-1}.pyramid_down.conv / down.{level-1}.combine.conv
    dec.{r}x{r}_in0 (+ attention) / _in1         mid_block1 (+ mid_attn) / mid_block2
    dec.{r}x{r}_block{b} (+ attention)           up.{j}.blocks.{b} (+ up.{j}.attn), j = levels-1-level
    dec.{r}x{r}_up                               up.{j-1}.upsample
    dec.{r}x{r}_aux_norm / _aux_conv             norm_out / conv_out ("standard" decoder)
                                                 up.{j}.pyramid_norm / up.{j}.pyramid_conv ("skip" decoder)
    block: norm0 conv0 affine norm1 conv1 skip   norm0 conv0 temb_proj norm1 conv1 shortcut
    ===========================================  ====================================================
    """
    k = _full(SONGUNET_DEFAULTS, edm)
    mult, n_blocks, mc = list(k["channel_mult"]), k["num_blocks"], k["model_channels"]
    levels = len(mult)
    res = [img_resolution >> i for i in range(levels)]
    attn_res = set(k["attn_resolutions"])
    m: KeyMap = {}
    if k["embedding_type"] == "fourier":
        m["map_noise.freqs"] = [("fourier.W", _same)]
    if k["label_dim"]:
        _layer(m, "map_label", "label_emb")
    if k["augment_dim"]:
        _layer(m, "map_augment", "augment_emb", ("weight",))
    _layer(m, "map_layer0", "temb_mlp.0")
    _layer(m, "map_layer1", "temb_mlp.2")
    r = res[0]
    _layer(m, f"enc.{r}x{r}_conv", "conv_in")
    cout = mc
    for i, r in enumerate(res):
        if i > 0:
            _song_block(m, f"enc.{r}x{r}_down", f"down.{i - 1}.downsample", None, True)
            if k["encoder_type"] == "skip":
                _layer(m, f"enc.{r}x{r}_aux_skip", f"down.{i - 1}.combine.conv")
            elif k["encoder_type"] == "residual":
                _layer(m, f"enc.{r}x{r}_aux_residual", f"down.{i - 1}.pyramid_down.conv")
        for b in range(n_blocks):
            cin, cout = cout, mc * mult[i]
            attn = f"down.{i}.attns.{b}" if r in attn_res else None
            _song_block(m, f"enc.{r}x{r}_block{b}", f"down.{i}.blocks.{b}", attn, cin != cout)
    r = res[-1]
    _song_block(m, f"dec.{r}x{r}_in0", "mid_block1", "mid_attn", False)
    _song_block(m, f"dec.{r}x{r}_in1", "mid_block2", None, False)
    for j, i in enumerate(reversed(range(levels))):
        r = res[i]
        if i < levels - 1:
            _song_block(m, f"dec.{r}x{r}_up", f"up.{j - 1}.upsample", None, True)
        for b in range(n_blocks + 1):
            attn = f"up.{j}.attn" if (b == n_blocks and r in attn_res) else None
            _song_block(m, f"dec.{r}x{r}_block{b}", f"up.{j}.blocks.{b}", attn, True)
        if k["decoder_type"] == "skip":
            _layer(m, f"dec.{r}x{r}_aux_norm", f"up.{j}.pyramid_norm")
            _layer(m, f"dec.{r}x{r}_aux_conv", f"up.{j}.pyramid_conv")
        elif i == 0:
            _layer(m, f"dec.{r}x{r}_aux_norm", "norm_out")
            _layer(m, f"dec.{r}x{r}_aux_conv", "conv_out")
    return m


def _adm_res(m: KeyMap, edm: str, ours: str, has_skip: bool) -> None:
    for e, o in (("norm0", "in_layers.0"), ("conv0", "in_layers.2"), ("affine", "emb_layers.1"),
                 ("norm1", "out_layers.0"), ("conv1", "out_layers.3")):
        _layer(m, f"{edm}.{e}", f"{ours}.{o}")
    if has_skip:
        _layer(m, f"{edm}.skip", f"{ours}.skip_connection")


def _adm_attn(m: KeyMap, edm: str, ours: str, channels: int) -> None:
    _layer(m, f"{edm}.norm2", f"{ours}.norm")
    _layer(m, f"{edm}.qkv", f"{ours}.qkv", transform=_qkv_per_head(channels))
    _layer(m, f"{edm}.proj", f"{ours}.proj_out", ("weight",), _conv1d)
    _layer(m, f"{edm}.proj", f"{ours}.proj_out", ("bias",))


def dhariwalunet_key_map(img_resolution: int, in_channels: int, out_channels: int, **edm: Any) -> KeyMap:
    """EDM DhariwalUNet state_dict keys -> ADMUNet keys (`resample_filter` buffers have no entry).

    ===========================================  ====================================================
    EDM DhariwalUNet                             scorelib ADMUNet
    ===========================================  ====================================================
    map_layer0 / map_layer1                      time_embed.0 / time_embed.2
    map_augment                                  augment_emb
    map_label.weight [E, K]                      label_emb.weight [K(+1), E] (transposed; null row 0)
    enc.{R}x{R}_conv                             input_blocks.0.0
    enc entries in order (down, block{b})        input_blocks.{1, 2, ...}.0 (+ .1 attention)
    dec.{r}x{r}_in0 (+ attention) / _in1         middle_block.0 (+ .1) / middle_block.2 (.1 without attention)
    dec.{r}x{r}_block{b} (+ attention)           output_blocks.{n}.0 (+ .1), in order
    dec.{r}x{r}_up                               the last layer of the previous output block
    out_norm / out_conv                          out.0 / out.2
    block: norm0 conv0 affine                    in_layers.0 in_layers.2 emb_layers.1
           norm1 conv1 skip                      out_layers.0 out_layers.3 skip_connection
    attention: norm2 qkv proj                    norm qkv (rows per head [q|k|v]) proj_out
    ===========================================  ====================================================
    """
    k = _full(DHARIWALUNET_DEFAULTS, edm)
    mult, n_blocks, mc = list(k["channel_mult"]), k["num_blocks"], k["model_channels"]
    levels = len(mult)
    res = [img_resolution >> i for i in range(levels)]
    attn_res, middle = _adm_attention(k, img_resolution)
    m: KeyMap = {}
    _layer(m, "map_layer0", "time_embed.0")
    _layer(m, "map_layer1", "time_embed.2")
    if k["augment_dim"]:
        _layer(m, "map_augment", "augment_emb", ("weight",))
    if k["label_dim"]:
        null = k["label_dropout"] > 0

        def rows(v: Tensor) -> Tensor:
            v = v.t()
            return torch.cat([v, v.new_zeros(1, v.shape[1])]) if null else v

        m["map_label.weight"] = [("label_emb.weight", rows)]
    r = res[0]
    _layer(m, f"enc.{r}x{r}_conv", "input_blocks.0.0")
    idx, cout = 1, mc * mult[0]
    for i, r in enumerate(res):
        if i > 0:
            _adm_res(m, f"enc.{r}x{r}_down", f"input_blocks.{idx}.0", False)
            idx += 1
        for b in range(n_blocks):
            cin, cout = cout, mc * mult[i]
            _adm_res(m, f"enc.{r}x{r}_block{b}", f"input_blocks.{idx}.0", cin != cout)
            if r in attn_res:
                _adm_attn(m, f"enc.{r}x{r}_block{b}", f"input_blocks.{idx}.1", cout)
            idx += 1
    r = res[-1]
    _adm_res(m, f"dec.{r}x{r}_in0", "middle_block.0", False)
    if middle:
        _adm_attn(m, f"dec.{r}x{r}_in0", "middle_block.1", cout)
    _adm_res(m, f"dec.{r}x{r}_in1", f"middle_block.{2 if middle else 1}", False)
    skips = [mc * mult[0]]  # channels of the encoder outputs, as EDM's decoder pops them
    for i in range(levels):
        skips += [mc * mult[i]] * n_blocks + ([mc * mult[i]] if i < levels - 1 else [])
    idx = 0
    for i in reversed(range(levels)):
        r = res[i]
        for b in range(n_blocks + 1):
            cin, cout = cout + skips.pop(), mc * mult[i]
            _adm_res(m, f"dec.{r}x{r}_block{b}", f"output_blocks.{idx}.0", cin != cout)
            n_layers = 1
            if r in attn_res:
                _adm_attn(m, f"dec.{r}x{r}_block{b}", f"output_blocks.{idx}.1", cout)
                n_layers = 2
            if b == n_blocks and i > 0:
                rn = res[i - 1]
                _adm_res(m, f"dec.{rn}x{rn}_up", f"output_blocks.{idx}.{n_layers}", False)
            idx += 1
    _layer(m, "out_norm", "out.0")
    _layer(m, "out_conv", "out.2")
    return m


def _convert(edm_state: Mapping[str, Tensor], key_map: KeyMap, target: nn.Module, what: str,
             filter_taps: Sequence[float] | None) -> dict[str, Tensor]:
    """Rename and transform `edm_state` into `target`'s state_dict (buffers it has of its own, such as
    FIR kernels, are kept). Raises ValueError naming any key that is missing, left over or misshapen."""
    ours = target.state_dict()
    out: dict[str, Tensor] = {}
    unused = []
    for key, value in edm_state.items():
        if key.endswith("resample_filter"):
            if value is not None and filter_taps is not None:
                f = torch.as_tensor(filter_taps, dtype=torch.float64)
                expect = torch.outer(f, f) / f.sum() ** 2
                same = value.is_meta or torch.allclose(value.detach().cpu().double().reshape(expect.shape), expect)
                if value.shape[-2:] != expect.shape or not same:
                    raise ValueError(f"{what}: {key} is not the resample filter {list(filter_taps)}")
            continue
        if key not in key_map:
            unused.append(key)
            continue
        for name, transform in key_map[key]:
            out[name] = transform(value)
    if unused:
        raise ValueError(f"{what}: keys with no scorelib counterpart: {unused[:5]}{' ...' if len(unused) > 5 else ''}")
    missing = [k for k in ours if k not in out and not k.endswith("fir")]  # FIR kernels are the network's own
    if missing:
        raise ValueError(f"{what}: scorelib keys not filled: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, value in out.items():
        if name not in ours:
            raise ValueError(f"{what}: {name} is not a key of the scorelib network")
        if tuple(value.shape) != tuple(ours[name].shape):
            raise ValueError(f"{what}: {name} has shape {tuple(value.shape)}, the network {tuple(ours[name].shape)}")
    for name in ours:
        out.setdefault(name, ours[name])
    return out


def convert_songunet_state(edm_state: Mapping[str, Tensor], img_resolution: int, in_channels: int,
                           out_channels: int, target: NCSNpp | None = None, **edm: Any) -> dict[str, Tensor]:
    """An EDM SongUNet state_dict as the state_dict of `NCSNpp(**songunet_kwargs(...))` (`target`, built
    on the meta device when not given). Every EDM key must map and every parameter must be filled."""
    if target is None:
        target = build_network("ncsnpp", songunet_kwargs(img_resolution, in_channels, out_channels, **edm), "meta")
    taps = _full(SONGUNET_DEFAULTS, edm)["resample_filter"]
    key_map = songunet_key_map(img_resolution, in_channels, out_channels, **edm)
    return _convert(edm_state, key_map, target, "SongUNet", taps)


def convert_dhariwalunet_state(edm_state: Mapping[str, Tensor], img_resolution: int, in_channels: int,
                               out_channels: int, target: ADMUNet | None = None, **edm: Any) -> dict[str, Tensor]:
    """An EDM DhariwalUNet state_dict as the state_dict of `ADMUNet(**dhariwalunet_kwargs(...))`."""
    if target is None:
        target = build_network("adm", dhariwalunet_kwargs(img_resolution, in_channels, out_channels, **edm), "meta")
    key_map = dhariwalunet_key_map(img_resolution, in_channels, out_channels, **edm)
    return _convert(edm_state, key_map, target, "DhariwalUNet", (1, 1))


def build_network(network: str, kwargs: Mapping[str, Any], device: str | torch.device | None = None) -> nn.Module:
    """`NCSNpp(**kwargs)` for "ncsnpp", `ADMUNet(**kwargs)` for "adm", built on `device`."""
    cls = {"ncsnpp": NCSNpp, "adm": ADMUNet}.get(network)
    if cls is None:
        raise ValueError(f"unknown EDM network kind {network!r} (ncsnpp or adm)")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# EDM's published configurations (train.py presets and its README's table of released models)
# ---------------------------------------------------------------------------------------------

#: EDM's two SongUNet variants (train.py `--arch=ddpmpp` / `ncsnpp`): the arguments that tell them apart.
SONGUNET_VARIANTS: Mapping[str, Mapping[str, Any]] = frozen(
    ddpmpp=frozen(embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
                  resample_filter=(1, 1)),
    ncsnpp=frozen(embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
                  resample_filter=(1, 3, 3, 1)),
)
_DDPMPP = dict(model_type="SongUNet", **SONGUNET_VARIANTS["ddpmpp"], model_channels=128, channel_mult=(2, 2, 2))
_NCSNPP = dict(model_type="SongUNet", **SONGUNET_VARIANTS["ncsnpp"], model_channels=128, channel_mult=(2, 2, 2))
_ADM = dict(model_type="DhariwalUNet", model_channels=192, channel_mult=(1, 2, 3, 4))


def _cfg(precond: str, arch: Mapping[str, Any], res: int, **kw: Any) -> Mapping[str, Any]:
    return frozen(precond=precond, img_resolution=res, img_channels=3, **{**arch, **kw})


#: name -> EDM's precond class name and network arguments of each released model (the training options of
#: EDM's README table): `EDM_CONFIGS["edm-cifar10-32x32-cond-vp"]`. Every released model is config F, trained
#: with EDM's own preconditioning (train.py `--precond` defaults to edm); "vp" / "ve" in a name is the
#: architecture (DDPM++ / NCSN++), the baselines (`baseline-*`) are the VP / VE / iDDPM-preconditioned ones.
#: Augmentation (p, 9 labels) and the training options (batch, lr, EMA, dropout) are listed in `EDM_TRAINING`.
EDM_CONFIGS: Mapping[str, Mapping[str, Any]] = frozen(**{
    "edm-cifar10-32x32-cond-vp": _cfg("EDMPrecond", _DDPMPP, 32, label_dim=10, augment_dim=9, dropout=0.13),
    "edm-cifar10-32x32-cond-ve": _cfg("EDMPrecond", _NCSNPP, 32, label_dim=10, augment_dim=9, dropout=0.13),
    "edm-cifar10-32x32-uncond-vp": _cfg("EDMPrecond", _DDPMPP, 32, augment_dim=9, dropout=0.13),
    "edm-cifar10-32x32-uncond-ve": _cfg("EDMPrecond", _NCSNPP, 32, augment_dim=9, dropout=0.13),
    "edm-ffhq-64x64-uncond-vp": _cfg("EDMPrecond", _DDPMPP, 64, channel_mult=(1, 2, 2, 2), augment_dim=9, dropout=0.05),
    "edm-ffhq-64x64-uncond-ve": _cfg("EDMPrecond", _NCSNPP, 64, channel_mult=(1, 2, 2, 2), augment_dim=9, dropout=0.05),
    "edm-afhqv2-64x64-uncond-vp": _cfg("EDMPrecond", _DDPMPP, 64, channel_mult=(1, 2, 2, 2), augment_dim=9,
                                       dropout=0.25),
    "edm-afhqv2-64x64-uncond-ve": _cfg("EDMPrecond", _NCSNPP, 64, channel_mult=(1, 2, 2, 2), augment_dim=9,
                                       dropout=0.25),
    "edm-imagenet-64x64-cond-adm": _cfg("EDMPrecond", _ADM, 64, label_dim=1000, dropout=0.10),
})

#: The training options of the released models (EDM README table; train.py defaults where it says nothing):
#: total batch, Adam lr (β = (0.9, 0.999), ε = 1e-8, lr ramp-up over 10 Mimg), EMA half-life in Mimg (ramp-up
#: ratio 0.05), augmentation probability p (0 = no pipeline), duration in Mimg.
EDM_TRAINING: Mapping[str, Mapping[str, Any]] = frozen(**{
    "cifar10": frozen(batch=512, lr=1e-3, ema_mimg=0.5, augment_p=0.12, duration_mimg=200),
    "ffhq": frozen(batch=256, lr=2e-4, ema_mimg=0.5, augment_p=0.15, duration_mimg=200),
    "afhqv2": frozen(batch=256, lr=2e-4, ema_mimg=0.5, augment_p=0.15, duration_mimg=200),
    "imagenet": frozen(batch=4096, lr=1e-4, ema_mimg=50, augment_p=0.0, duration_mimg=2500, loss_scaling=100),
})
