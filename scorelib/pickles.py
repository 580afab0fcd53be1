"""EDM and EDM2 `.pkl` snapshots read as data: an allow-list unpickler that runs no code from the file.

EDM (NVlabs/edm) and EDM2 (NVlabs/edm2) save networks with `pickle.dump` of objects whose classes are
marked persistent (their torch_utils/persistence.py): each such object pickles as a call
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with `meta` = {type: "class", version,
module_src: the source of the module that defined the class, class_name, state: the object's
__dict__}. Loading such a file with `pickle.load` compiles and runs `module_src`. Here it never is:
`read_pickle` reconstructs each persistent object as a `PickledObject` record (class name, init
arguments, parameters, buffers, child records and plain attributes; the source kept as text only),
tensors come through torch's own rebuild functions with their storage bytes read by
`torch.load(weights_only=True)`, and every other global the file names is refused: a
`CheckpointError` naming the file and the global.

Allowed globals: the persistence hook above; torch's tensor / parameter rebuild functions and dtypes;
`torch.storage._load_from_bytes` (read with weights_only); `collections.OrderedDict`; `_codecs.encode` for
latin-1 (how protocol-2 pickles write bytes); EDM's
`dnnlib.util.EasyDict` (read as a dict); numpy scalars, dtypes and arrays; and any `torch.nn` module class,
which becomes a record like a persistent object (EDM's `ModuleDict`). Nothing from the file is ever
called except these.

`load_edm_snapshot(path)` turns an EDM snapshot (`network-snapshot-*.pkl`, the released `edm-*.pkl`)
into a scorelib network in its EDM wrapper (`scorelib.models.edm`, `scorelib.precond`).
"""

from __future__ import annotations

import collections
import importlib
import io
import pickle
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checkpoint import CheckpointError
from .models.edm import (
    EDMArchitecture,
    build_network,
    convert_dhariwalunet_state,
    convert_songunet_state,
)
from .models.edm import edm_architecture as edm_network_architecture
from .precond import EDMPrecond, IDDPMPrecond, Precond, VEPrecond, VPPrecond

__all__ = ["EDMArchitecture", "PickledObject", "TorchModuleRecord", "edm_architecture", "edm_precond",
           "edm_snapshot_network", "load_edm_snapshot", "read_pickle"]

class _Refused(pickle.UnpicklingError):
    """Something outside the allow-list; read_pickle reports it as one CheckpointError line."""


# Entries of a torch module's __dict__ that hold its structure or hooks, not attributes.
_MODULE_SLOTS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


@dataclass
class PickledObject:
    """One persistent object (or torch module) of a pickle, as data.

    class_name: the class's name (`EDMPrecond`; `torch.nn.modules.container.ModuleDict` for torch
    classes); persistent: whether it carried its module source (`source`, text never executed);
    init_args / init_kwargs: the constructor arguments EDM's persistence records; parameters,
    buffers (persistent ones only in `state_dict`), children: the module's own tensors and
    sub-records; attributes: every other entry of its __dict__ (plain values, tensors, records).
    """

    class_name: str
    persistent: bool
    init_args: tuple = ()
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Tensor | None] = field(default_factory=dict)
    buffers: dict[str, Tensor | None] = field(default_factory=dict)
    non_persistent: set[str] = field(default_factory=set)
    children: dict[str, PickledObject | None] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    version: int | None = None

    def state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Parameters and persistent buffers of this record and its children, keyed as torch's
        `Module.state_dict` keys them (None entries left out)."""
        out: dict[str, Tensor] = {}
        for name, value in self.parameters.items():
            if value is not None:
                out[prefix + name] = value
        for name, value in self.buffers.items():
            if value is not None and name not in self.non_persistent:
                out[prefix + name] = value
        for name, child in self.children.items():
            if child is not None:
                out.update(child.state_dict(f"{prefix}{name}."))
        return out

    def child(self, path: str) -> PickledObject:
        """The sub-record at a dotted path ("model", "model.enc")."""
        node = self
        for part in path.split("."):
            nxt = node.children.get(part)
            if nxt is None:
                raise KeyError(f"{self.class_name} has no child {path!r}")
            node = nxt
        return node

    def records(self) -> Iterator[PickledObject]:
        """This record and every record below it."""
        yield self
        for child in self.children.values():
            if child is not None:
                yield from child.records()


def _from_state(record: PickledObject, state: Any) -> PickledObject:
    """Fill a record from an object's pickled __dict__ (a dict) or (dict, slots) pair."""
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]}
    if state is None:
        return record
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"{record.class_name}: state of type {type(state).__name__}, not a dict")
    state = dict(state)
    init_args, init_kwargs = state.pop("_init_args", None), state.pop("_init_kwargs", None)
    record.init_args = tuple(init_args or ())
    record.init_kwargs = dict(init_kwargs or {})
    record.parameters = dict(state.pop("_parameters", None) or {})
    record.buffers = dict(state.pop("_buffers", None) or {})
    record.non_persistent = set(state.pop("_non_persistent_buffers_set", None) or ())
    record.children = dict(state.pop("_modules", None) or {})
    for name, child in record.children.items():
        if child is not None and not isinstance(child, PickledObject):
            raise pickle.UnpicklingError(f"{record.class_name}.{name}: a child module of type {type(child).__name__}")
    # torch's hook dictionaries and flags are dropped; everything else is an attribute
    record.attributes = {k: _plain(v) for k, v in state.items() if not (k.startswith("_") and "hook" in k)}
    return record


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, containers recursively (numpy arrays and tensors kept)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((k, _plain(v)) for k, v in value.items()) if isinstance(value, collections.OrderedDict) \
            else {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _reconstruct_persistent(meta: Any) -> PickledObject:
    """EDM's `_reconstruct_persistent_obj(meta)`, as data: the module source is kept, never compiled."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("a persistent object whose record is not {type: 'class', class_name, ...}")
    source = meta.get("module_src")
    record = PickledObject(meta["class_name"], True, source=source if isinstance(source, str) else None,
                           version=meta.get("version"))
    return _from_state(record, meta.get("state"))


class TorchModuleRecord(PickledObject):
    """A record standing in for a torch.nn module class the file names (EDM's `ModuleDict`): the
    unpickler creates it where the file would create the module, and fills it from the module's state."""

    qualified_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> TorchModuleRecord:
        record = object.__new__(cls)
        PickledObject.__init__(record, cls.qualified_name, False)
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # filled by __new__ and __setstate__; constructor arguments from the file are ignored

    def __setstate__(self, state: Any) -> None:
        _from_state(self, state)


def _torch_module_class(qualified: str) -> type:
    return type("TorchModuleRecord", (TorchModuleRecord,), {"qualified_name": qualified})


def _load_storage(data: bytes) -> Any:
    """`torch.storage._load_from_bytes`: the bytes are a torch.save stream, read with weights_only."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage bytes expected")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:  # torch's weights_only refusal, several lines: keep the global's name
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise _Refused("refused storage bytes that torch.load(weights_only=True) refuses"
                       f"{' (the global ' + named.group(1) + ')' if named else ''}") from None


def _rebuild_parameter(data: Tensor, requires_grad: bool, backward_hooks: Any, *state: Any) -> Tensor:
    """A parameter as a plain tensor (its hooks and flags are not data)."""
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError("a parameter whose data is not a tensor")
    return data


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *rest: Any) -> Tensor:
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("a tensor whose storage was not read from storage bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed for latin-1 bytes only")
    return text.encode("latin1")


def _numpy_multiarray() -> Any:
    """numpy's multiarray module (numpy._core in numpy 2, numpy.core before)."""
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


class _Call:
    """One of this module's functions as the file sees it: callable, but with no attributes a BUILD
    opcode could change (pickle's BUILD sets attributes on whatever object is on its stack)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError("the file tried to change an allowed function")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("the file tried to change an allowed function")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Call(_reconstruct_persistent),
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call(_rebuild_parameter),
    ("torch.storage", "_load_from_bytes"): _Call(_load_storage),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _Call(_latin1_bytes),
    ("dnnlib.util", "EasyDict"): dict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}
# numpy scalars and arrays (numpy 1 and 2 module names): data constructors only
_NUMPY_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for n in ("scalar", "_reconstruct")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) in _NUMPY_GLOBALS:
            return getattr(_numpy_multiarray(), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("torch.nn.modules.") and isinstance(_torch_attr(module, name), type):
            return _torch_module_class(f"{module}.{name}")
        raise _Refused(f"refused to load the global {module}.{name} (not on scorelib's allow-list for EDM / EDM2 "
                       "pickles)")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("refused a persistent id (this is not a plain pickle)")


def _torch_attr(module: str, name: str) -> Any:
    """The attribute `name` of an already imported torch.nn.modules submodule (nothing new is imported)."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def read_pickle(path: str | Path) -> Any:
    """The object a pickle holds, with persistent objects (EDM / EDM2) and torch modules as `PickledObject`
    records, tensors as tensors, EasyDicts as dicts. No code from the file runs: a global outside the
    allow-list (see the module docstring) is a `CheckpointError` naming the file and the global."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            return _Unpickler(f).load()
    except _Refused as e:
        raise CheckpointError(f"{path}: {e}") from None
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    except Exception as e:  # a malformed stream, a storage torch refuses, a record of the wrong shape
        raise CheckpointError(f"{path}: not a readable EDM / EDM2 pickle ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------------------------
# EDM snapshots -> scorelib networks
# ---------------------------------------------------------------------------------------------

def edm_architecture(precond: PickledObject) -> EDMArchitecture:
    """The scorelib architecture of an EDM network record (an `EDMPrecond` / `VPPrecond` / `VEPrecond` /
    `iDDPMPrecond` wrapping a `SongUNet` or `DhariwalUNet`), from the constructor arguments the records
    carry (EDM's defaults for those not passed)."""
    model = precond.children.get("model")
    if model is not None and model.init_args:
        raise ValueError(f"{model.class_name} was built with positional arguments; EDM passes keywords")
    return edm_network_architecture(precond.class_name, precond.init_kwargs,
                                    getattr(model, "class_name", None), getattr(model, "init_kwargs", {}))


def edm_precond(arch: EDMArchitecture, net: torch.nn.Module) -> Precond:
    """`net` in the scorelib wrapper `arch` names, with its arguments."""
    k = dict(arch.precond_kwargs)
    if arch.precond == "edm":
        return EDMPrecond(net, k.get("sigma_data", 0.5), sigma_min=k.get("sigma_min", 0.0),
                          sigma_max=k.get("sigma_max", float("inf")))
    if arch.precond == "vp":
        return VPPrecond(net, **k)
    if arch.precond == "ve":
        return VEPrecond(net, **k)
    if arch.precond == "iddpm":
        return IDDPMPrecond(net, **k, learned_variance=bool(arch.network_kwargs.get("learn_sigma", True)))
    raise ValueError(f"unknown EDM preconditioning {arch.precond!r}")


def edm_snapshot_network(precond: PickledObject) -> Precond:
    """A scorelib network (eval mode, float32) with the weights of an EDM network record, in its wrapper."""
    arch = edm_architecture(precond)
    model = precond.child("model")
    net = build_network(arch.network, arch.network_kwargs)
    convert = convert_songunet_state if arch.network == "ncsnpp" else convert_dhariwalunet_state
    state = {k: v.float() for k, v in model.state_dict().items()}
    net.load_state_dict(convert(state, target=net, **model.init_kwargs))
    wrapper = edm_precond(arch, net).eval().requires_grad_(False)
    u = precond.buffers.get("u")
    if isinstance(wrapper, IDDPMPrecond) and u is not None:  # EDM's stored grid u_0 > ... > u_{M-1} > u_M = 0
        ours = wrapper.sigmas.flip(0)
        # EDM computes u in float32: its smallest levels are off by up to 5e-4 relative
        if u.shape != (ours.shape[0] + 1,) or not torch.allclose(u[:-1].double(), ours, rtol=2e-3):
            raise ValueError("the iDDPM noise levels stored in the snapshot differ from those of its C_1, C_2, M")
    return wrapper


def load_edm_snapshot(path: str | Path, key: str = "ema") -> Precond:
    """An EDM snapshot (`network-snapshot-*.pkl`, `edm-*.pkl`) as a scorelib wrapper (`EDMPrecond`,
    `VPPrecond`, `VEPrecond` or `IDDPMPrecond`) around `NCSNpp` / `ADMUNet` with the weights of `key`
    (EDM's EMA network). `arch = edm_architecture(read_pickle(path)["ema"])` gives the constructor
    arguments to store beside exported weights. Errors name the file."""
    data = read_pickle(path)
    if not isinstance(data, Mapping) or not isinstance(data.get(key), PickledObject):
        found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise CheckpointError(f"{path}: no EDM network under {key!r} (found {found})")
    try:
        return edm_snapshot_network(data[key])
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
