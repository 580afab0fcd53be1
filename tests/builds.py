"""Short forms of what tests take from a config's Experiment (scorelib.builder)."""

from __future__ import annotations

from typing import Any

from torch import nn

from scorelib.builder import Experiment, experiment


def exp_of(config: Any, mode: str = "network", workdir: Any = None) -> Experiment:
    """The config's Experiment (mode "network": the network and sampler, no loss, no checkpoint)."""
    return experiment(config, workdir, mode)


def network(config: Any) -> nn.Module:
    """A new network of the config."""
    return exp_of(config).network()


def wrapped(config: Any, net: nn.Module) -> nn.Module:
    """`net` in the config's σ-space wrapper (its one conditioning)."""
    return exp_of(config).wrap(net)
