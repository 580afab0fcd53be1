"""The FID Inception-v3 network (TensorFlow `inception-2015-12-05` graph) and its weights loader.

FID (Heusel et al. 2017), KID (Bińkowski et al. 2018) and the Inception Score (Salimans et al. 2016)
are only comparable across papers when computed with this particular network: the TF graph the
original FID/IS code used, ported to PyTorch by pytorch-fid as `pt_inception-2015-12-05-6726825d.pth`.
`FIDInceptionV3` has exactly that file's parameter names and shapes (torchvision's Inception3 layout
with `num_classes=1008`, no auxiliary head), so the file loads with `strict=True`. It differs from
torchvision's ImageNet Inception-v3 (Szegedy et al. 2016) in three places that change the numbers:

- the average-pool branches of the A, C and first E blocks exclude the zero padding from the mean
  (TF's `avg_pool` with SAME padding), `count_include_pad=False`;
- the last E block (Mixed_7c) pools its pool branch with a 3×3 *max* pool, not an average pool;
- the classifier has 1008 outputs (the TF graph's 1000 ImageNet classes plus 8 unused ones);
  the original IS code takes the softmax over all 1008, and so does `inception_score` here.

The logits `forward` returns are the *unbiased* ones, pool3·Wᵀ without the fc bias: the original IS
code (openai/improved-gan inception_score/model.py) multiplies pool_3 by the weight input of
`softmax/logits/MatMul` and never adds the bias; torch-fidelity's `logits_unbiased` feature and
StyleGAN2-ADA's metrics/inception_score.py (`no_output_bias=True`) do the same. The bias stays in
the state_dict (the weights file has it).

Weights: `load_inception(path)`; the file is found from the argument, else the environment variable
`SCORELIB_INCEPTION`, else torch hub's checkpoint folder (where pytorch-fid itself downloads it).
Nothing is ever downloaded here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..checkpoint import CheckpointError, read_torch

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILENAME}"
INCEPTION_ENV = "SCORELIB_INCEPTION"
N_FEATURES = 2048
N_LOGITS = 1008


class BasicConv2d(nn.Module):
    """Conv (no bias) → BatchNorm (ε = 1e-3, TF's value) → ReLU. Parameter names: `conv`, `bn`."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    """3×3 stride-1 SAME average pool that, like TF, averages only over in-image pixels."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block (Mixed_5b/c/d): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | pool→1×1; out 224 + pool_features."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class InceptionB(nn.Module):
    """Grid reduction 35→17 (Mixed_6a): stride-2 3×3 | 1×1→3×3→stride-2 3×3 | max pool; out c_in + 480."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (Mixed_6b-e); out 768."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class InceptionD(nn.Module):
    """Grid reduction 17→8 (Mixed_7a): 1×1→stride-2 3×3 | 1×1→1×7→7×1→stride-2 3×3 | max pool; out 1280."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8×8 block with split 1×3 / 3×1 outputs (Mixed_7b, Mixed_7c); out 2048.

    `max_pool=True` is the FID graph's Mixed_7c, whose pool branch is a 3×3 max pool.
    """

    def __init__(self, c_in: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([a, b, c, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the TF FID/IS graph; state_dict layout of pytorch-fid's weights file.

    forward(x: [B, 3, H, W] in [0, 1]) -> (pool3 features [B, 2048], unbiased logits [B, 1008]),
    the logits pool3·Wᵀ of the fc layer without its bias (the Inception Score's input, see above).
    A 1-channel input is repeated to 3 channels. With `resize_input` the images are resized to
    299×299 bilinearly (align_corners=False, as pytorch-fid does); they are then mapped to [-1, 1],
    the range the network was trained on.
    """

    def __init__(self, resize_input: bool = True):
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(N_FEATURES, N_LOGITS)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.pool3(x)
        return features, self.logits(features)

    def pool3(self, x: Tensor) -> Tensor:
        """Images [B, 3 or 1, H, W] in [0, 1] -> pool3 features [B, 2048] (FID's features)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 3, H, W] (or [B, 1, H, W]), got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize_input:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 147×147 at 299 input
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 73×73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 71×71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 35×35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # 35 → 17 (Mixed_6a) → 8 (Mixed_7a)
        return x.mean(dim=(2, 3))  # pool3: global average pool, [B, 2048]

    def logits(self, features: Tensor) -> Tensor:
        """pool3 features [B, 2048] -> unbiased logits pool3·Wᵀ [B, 1008]: the fc layer without its bias,
        the Inception Score's input (module docstring); dropout is the identity at evaluation."""
        return F.linear(features, self.fc.weight)


class InceptionWeightsNotFoundError(FileNotFoundError):
    """The FID Inception weights file is not where `load_inception` looked for it."""


def default_inception_path() -> Path:
    """torch hub's checkpoint folder / pt_inception-2015-12-05-6726825d.pth (pytorch-fid's download place)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def _candidate_path(path: str | os.PathLike | None) -> tuple[Path, str]:
    """The weights path to use and a phrase saying where it came from."""
    if path is not None:
        return Path(path).expanduser(), "the path argument"
    env = os.environ.get(INCEPTION_ENV)
    if env:
        return Path(env).expanduser(), f"${INCEPTION_ENV}"
    return default_inception_path(), f"the default location (${INCEPTION_ENV} is not set)"


def inception_weights_path(path: str | os.PathLike | None = None) -> Path:
    """The weights file `load_inception(path)` reads: `path`, else $SCORELIB_INCEPTION, else the default."""
    return _candidate_path(path)[0]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state_dict from a .safetensors file or a torch.save file (weights_only: never runs code)."""
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else read_torch(path)
    except CheckpointError as err:
        raise ValueError(f"the Inception weights file {err}") from err
    except Exception as err:  # safetensors' own errors are one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"the Inception weights file {path} is not a readable safetensors file ({first})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    return state


def load_inception(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> FIDInceptionV3:
    """The FID Inception-v3 with pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` weights, in eval mode.

    The file is `path` if given, else `$SCORELIB_INCEPTION`, else
    `<torch hub dir>/checkpoints/pt_inception-2015-12-05-6726825d.pth`. A `.safetensors` file with the
    same keys also works. Raises InceptionWeightsNotFoundError (a FileNotFoundError) naming the path
    when the file is missing, and ValueError naming the file when its keys or shapes do not match.
    """
    file, source = _candidate_path(path)
    if not file.is_file():
        raise InceptionWeightsNotFoundError(
            f"FID Inception weights not found at {file} (from {source}). Download {INCEPTION_FILENAME} "
            f"from pytorch-fid's GitHub release ({INCEPTION_URL}) and either pass its path to "
            f"load_inception(path), set ${INCEPTION_ENV} to it, or put it at {default_inception_path()}."
        )
    state = _read_state_dict(file)
    model = FIDInceptionV3()
    _check_keys(file, state, model.state_dict())
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device)


def _check_keys(file: Path, state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """ValueError naming `file` and a few offending keys unless `state` has exactly the expected keys and shapes
    (BatchNorm's num_batches_tracked may be absent: older checkpoints lack it and it is unused here)."""
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in state if k in expected and state[k].shape != expected[k].shape]
    problems = [f"{len(v)} {what} (e.g. {', '.join(v[:3])})" for what, v in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if v]
    if problems:
        raise ValueError(f"{file} is not an FID Inception-v3 state_dict in the {INCEPTION_FILENAME} format: "
                         + "; ".join(problems))
