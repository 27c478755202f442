"""Channel groups: coupled channels that are removed together, and where they appear in the model.

A group is what a criterion scores and what a plan prunes. It knows its
parameters (:class:`Member`: which dim of which tensor its channels run through,
and which indices of that dim each channel owns) and, on demand, the outputs of
the traced forward pass that carry its channels (:class:`ChannelSite`), so a
criterion needs the group and the model's tensors, never the analysis behind them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class Member:
    """One parameter dimension a group's channels run through.

    ``rows`` lists, channel by channel, the indices of ``dim`` the group's channels
    own, when that dim is more than the group (attention heads inside
    ``heads x head_dim``, a range of a concatenation); None when the dim *is* the group.
    """

    param: str
    dim: int
    module: str
    role: str  # "output" (the layer's filters), "norm" (a norm scale), or "other"
    rows: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def channel_rows(self, tensor: torch.Tensor, channels: int) -> torch.Tensor:
        """``tensor`` (this member's parameter, or anything shaped like it) as ``(channels, -1)``: one row per channel
        of the group, holding every element that belongs to that channel."""
        x = tensor.detach().movedim(self.dim, 0).reshape(tensor.shape[self.dim], -1)
        return x if self.rows is None else x[self.rows].reshape(channels, -1)


@dataclass(frozen=True)
class ChannelSite:
    """An output of the traced forward pass whose dim ``dim`` carries a group's channels.

    ``op`` is the op's position in the trace (identity ops such as ``detach`` are not
    counted), ``op_name`` its aten name, ``output`` which of its tensor outputs;
    ``channel[i]`` is the group's channel at index ``i`` of that dim, or -1 where the
    index belongs to another group (the dim is a product or a concatenation).
    """

    op: int
    op_name: str
    output: int
    dim: int
    channel: torch.Tensor = field(compare=False, repr=False)


@dataclass
class ChannelGroup:
    """Coupled channels that are removed together.

    ``channels`` is the group's width; ``layers`` the modules whose parameters it
    runs through; ``members`` the parameter dims; ``macs_per_channel`` /
    ``params_per_channel`` what removing one channel saves in the unpruned model;
    ``sites`` (computed on first use) where the forward pass carries its channels.
    """

    name: str
    channels: int
    layers: list[str]
    members: list[Member]
    macs_per_channel: int = 0
    params_per_channel: int = 0
    atom: int = field(default=-1, repr=False)  # the group's axis in the analysis (engine-internal)
    _locate: Callable[["ChannelGroup"], list[ChannelSite]] | None = field(default=None, repr=False, compare=False)
    _sites: list[ChannelSite] | None = field(default=None, repr=False, compare=False)

    @property
    def producers(self) -> list[Member]:
        """The members whose *output* channels the group is (the filters); all members when none is."""
        return [m for m in self.members if m.role == "output"] or list(self.members)

    @property
    def sites(self) -> list[ChannelSite]:
        if self._sites is None:
            self._sites = self._locate(self) if self._locate is not None else []
        return self._sites
