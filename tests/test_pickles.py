"""EDM / EDM2 `.pkl` snapshots read as data (scorelib.pickles): no code from the file runs.

Fixtures (tests/data/edm/): `edm-tiny-{arch}-{precond}-{cond}.pkl` were written by EDM's own code on CPU:
EDM's train.py presets for DDPM++ / NCSN++ (SongUNet) and ADM (DhariwalUNet) at 8x8 with 4 base
channels, wrapped in its `VPPrecond` / `VEPrecond` / `EDMPrecond` / `iDDPMPrecond`, parameters replaced
by seeded draws, pickled as EDM's training loop does (`pickle.dump(dict(ema=..., loss_fn=...,
augment_pipe=..., dataset_kwargs=...))`), with one change: the module source each persistent object
embeds was replaced by a one-line placeholder (EDM's code is not ours to ship; scorelib never reads it).
`edm_tiny_outputs.pt` holds EDM's D(x; σ) of each on seeded inputs. `edm2-tiny-snapshot.pkl` was
written the same way by EDM2's code (a tiny `training.networks_edm2.Precond`, float16 as EDM2 saves
it, its `StabilityVAEEncoder` and `EDM2Loss`, an EasyDict at the top); `edm2-tiny-snapshot.json` lists
its state_dict (shape, dtype, sum per key) and constructor arguments.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from scorelib import EDMPrecond, IDDPMPrecond, VEPrecond, VPPrecond, load_edm_snapshot, read_pickle
from scorelib.checkpoint import CheckpointError
from scorelib.models.edm import build_network
from scorelib.pickles import PickledObject, edm_architecture, edm_precond

DATA = Path(__file__).parent / "data" / "edm"
OUTPUTS = torch.load(DATA / "edm_tiny_outputs.pt", weights_only=True)
WRAPPER = {"vp": VPPrecond, "ve": VEPrecond, "edm": EDMPrecond, "iddpm": IDDPMPrecond}


def _denoise(wrapper, case):
    kw = {}
    if case["y"] is not None:
        kw["y"] = case["y"]
    if case["augment_labels"] is not None:
        kw["augment_labels"] = case["augment_labels"]
    sigma = case["sigma"]
    with torch.no_grad():
        return wrapper.denoise(case["x"] * (1 + sigma.reshape(-1, 1, 1, 1)), sigma, **kw)


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_edm_snapshot_loads_and_equals_edm(name):
    """Each layout (DDPM++ and NCSN++ with VP / VE / EDM wrappers, ADM with EDM / iDDPM, class-conditional
    or not, with augmentation labels or not) loads into NCSNpp / ADMUNet in its scorelib wrapper and gives
    EDM's D(x; σ) to 1e-5 relative; same parameter count."""
    case = OUTPUTS[name]
    wrapper = load_edm_snapshot(DATA / f"edm-tiny-{name}.pkl")
    assert isinstance(wrapper, WRAPPER[name.split("-")[1]]) and not wrapper.training
    assert sum(p.numel() for p in wrapper.parameters()) == case["n_params"]
    d = _denoise(wrapper, case)
    assert float((d - case["D"]).abs().max() / case["D"].abs().max()) < 1e-5
    if case["D_noaug"] is not None:  # no augmentation labels at sampling time
        wrapper_d = _denoise(wrapper, {**case, "augment_labels": None})
        assert float((wrapper_d - case["D_noaug"]).abs().max() / case["D_noaug"].abs().max()) < 1e-5


def test_snapshot_records_are_plain_data():
    data = read_pickle(DATA / "edm-tiny-ncsnpp-ve-cond.pkl")
    assert set(data) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"}
    ema = data["ema"]
    assert isinstance(ema, PickledObject) and ema.persistent and ema.class_name == "VEPrecond"
    assert ema.init_kwargs["model_type"] == "SongUNet" and ema.init_kwargs["label_dim"] == 4
    assert ema.child("model").class_name == "SongUNet"
    assert ema.child("model.enc").class_name == "torch.nn.modules.container.ModuleDict"
    assert all(isinstance(v, torch.Tensor) for v in ema.state_dict().values())
    assert data["loss_fn"].class_name == "VELoss" and data["loss_fn"].attributes["sigma_max"] == 100
    pipe = data["augment_pipe"]
    assert pipe.class_name == "AugmentPipe" and pipe.init_kwargs["p"] == 0.12 and pipe.attributes["xflip"] == 1e8
    assert data["dataset_kwargs"]["class_name"] == "training.dataset.ImageFolderDataset"
    assert "elided" in ema.source  # the embedded source is kept as text only
    arch = edm_architecture(ema)
    assert arch.network == "ncsnpp" and arch.precond == "ve"
    assert arch.precond_kwargs == {"sigma_min": 0.02, "sigma_max": 100.0}
    assert arch.network_kwargs["label_dim"] == 4 and arch.network_kwargs["fourier_of_log"] is False


def test_numpy_values_under_numpy_1_and_2_names(tmp_path):
    """numpy scalars and arrays (EDM's skip_scale = np.sqrt(0.5), EDM2's encoder arrays) under numpy 2's
    and numpy 1's module names, and protocol-2 bytes; record attributes hold Python numbers."""
    import numpy as np

    blob = pickle.dumps({"a": np.float64(0.5), "b": np.arange(3, dtype=np.float32)}, protocol=2)
    for i, data in enumerate((blob, blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))):
        path = tmp_path / f"np{i}.pkl"
        path.write_bytes(data)
        out = read_pickle(path)
        assert out["a"] == 0.5 and out["b"].tolist() == [0.0, 1.0, 2.0]
    block = read_pickle(DATA / "edm-tiny-ddpmpp-edm-uncond.pkl")["ema"].child("model.enc.8x8_block0")
    assert type(block.attributes["skip_scale"]) is float and block.attributes["skip_scale"] == pytest.approx(0.5**0.5)


def test_edm2_snapshot_records():
    """EDM2's snapshots use the same persistence format: the records carry its network's state_dict
    (float16), constructor arguments, and its encoder's numpy attributes; nothing runs."""
    data = read_pickle(DATA / "edm2-tiny-snapshot.pkl")
    expect = json.loads((DATA / "edm2-tiny-snapshot.json").read_text())
    assert isinstance(data, dict) and set(data) == {"ema", "encoder", "loss_fn", "dataset_kwargs"}
    state = data["ema"].state_dict()
    assert len(state) == len(expect["state"])
    for key, shape, dtype, total, _ in expect["state"]:
        assert list(state[key].shape) == shape and str(state[key].dtype) == dtype
        assert float(state[key].double().sum()) == pytest.approx(total, abs=1e-9)
    assert data["ema"].init_kwargs == expect["ema_init_kwargs"]
    assert sorted({r.class_name for r in data["ema"].records() if r.persistent}) == expect["persistent_classes"]
    assert data["loss_fn"].class_name == "EDM2Loss" and data["loss_fn"].init_kwargs == expect["loss_init_kwargs"]
    enc = data["encoder"]
    assert enc.attributes["scale"].tolist() == pytest.approx(expect["encoder_scale"])
    assert enc.attributes["bias"].tolist() == pytest.approx(expect["encoder_bias"])
    assert data["dataset_kwargs"] == expect["dataset_kwargs"]
    with pytest.raises(CheckpointError, match="not an EDM network: Precond"):
        load_edm_snapshot(DATA / "edm2-tiny-snapshot.pkl")


def test_loaded_network_exports_to_safetensors(tmp_path):
    """The loaded network is a plain scorelib network: its state_dict round-trips through safetensors
    into a network built from the recorded architecture alone."""
    path = DATA / "edm-tiny-adm-edm-cond.pkl"
    wrapper = load_edm_snapshot(path)
    save_file(wrapper.net.state_dict(), str(tmp_path / "w.safetensors"))
    arch = edm_architecture(read_pickle(path)["ema"])
    net = build_network(arch.network, arch.network_kwargs)
    net.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    again = edm_precond(arch, net.eval())
    case = OUTPUTS["adm-edm-cond"]
    torch.testing.assert_close(_denoise(again, case), _denoise(wrapper, case), rtol=0, atol=0)


# --- files that would run code ------------------------------------------------------------------------


def _persistent_pickle(monkeypatch, meta) -> bytes:
    """A pickle of a persistent object as EDM's persistence writes it: a call of
    torch_utils.persistence._reconstruct_persistent_obj(meta)."""
    module = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("never called while pickling")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)

    class Persistent:
        def __reduce__(self):
            return _reconstruct_persistent_obj, (meta,)

    return pickle.dumps({"ema": Persistent()})


class Command:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_embedded_source_is_never_executed(tmp_path, monkeypatch):
    """A persistent object whose module source writes a file on import loads as a record; the file
    does not appear (pickle.load with EDM's persistence module would exec the source)."""
    marker = tmp_path / "written-by-module-source"
    source = f"open({str(marker)!r}, 'w').write('ran')\nclass Net:\n    pass\n"
    state = {"_init_kwargs": {"width": 3}, "_parameters": OrderedDict(w=torch.ones(2)), "_buffers": OrderedDict(),
             "_modules": OrderedDict(), "training": False}
    blob = _persistent_pickle(monkeypatch, {"type": "class", "version": 6, "module_src": source,
                                            "class_name": "Net", "state": state})
    path = tmp_path / "source.pkl"
    path.write_bytes(blob)
    record = read_pickle(path)["ema"]
    assert not marker.exists()
    assert record.class_name == "Net" and record.init_kwargs == {"width": 3} and record.source == source
    assert torch.equal(record.state_dict()["w"], torch.ones(2))
    exec(compile(record.source, "payload", "exec"), {})  # the payload is live: run on purpose, it writes
    assert marker.exists()


@pytest.mark.parametrize("where", ["top", "inside a persistent object", "inside a storage"])
def test_a_global_outside_the_allow_list_is_refused(tmp_path, monkeypatch, where):
    """os.system in a __reduce__ (at the top, in a persistent object's state, or inside a tensor's storage
    bytes) is refused with one CheckpointError naming the file and the global; the command never runs."""
    marker = tmp_path / "written-by-os-system"
    evil = Command(f"touch {marker}")
    if where == "top":
        blob = pickle.dumps({"ema": evil})
    elif where == "inside a persistent object":
        blob = _persistent_pickle(monkeypatch, {"type": "class", "version": 6, "module_src": "", "class_name": "Net",
                                                "state": {"_init_kwargs": {"hook": evil}}})
    else:
        blob = pickle.dumps({"ema": StorageBytes(pickle.dumps(evil, protocol=2))})
    path = tmp_path / "evil.pkl"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError) as err:
        read_pickle(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert f"{os.system.__module__}.system" in message
    assert not marker.exists()


class StorageBytes:
    """Pickles as torch.storage._load_from_bytes(data), the call a tensor's storage pickles as."""

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)


@pytest.mark.parametrize("global_name", ["builtins.eval", "builtins.exec", "subprocess.Popen", "torch.load"])
def test_other_callables_are_refused(tmp_path, global_name):
    module, name = global_name.rsplit(".", 1)
    blob = b"\x80\x04\x95" + b"\x00" * 8 + f"c{module}\n{name}\n".encode() + b"\x8c\x011\x85R."
    path = tmp_path / "call.pkl"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match=rf"refused to load the global {global_name}"):
        read_pickle(path)


def test_the_file_cannot_change_an_allowed_function(tmp_path):
    """pickle's BUILD sets attributes on the object on its stack: on an allowed function it is refused."""
    blob = b"\x80\x02ctorch._utils\n_rebuild_parameter\n}X\x08\x00\x00\x00__code__K\x01sb."
    path = tmp_path / "build.pkl"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match="tried to change an allowed function"):
        read_pickle(path)
