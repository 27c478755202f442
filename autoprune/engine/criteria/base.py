"""What a channel-importance criterion is, and the helpers they share.

A criterion scores every channel of the groups it is asked about; higher means
more important, and a group keeps its highest-scoring channels. A group's
channels run through several layers: each layer's per-channel scores are
normalised to mean 1 and then summed, so wide and narrow layers weigh the same.
Weight criteria score the layers whose *output* channels the group is (the
filters); a group without such a layer is scored by all of its parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

if TYPE_CHECKING:
    from ..space import ChannelGroup, Member, PruningSpace

CRITERIA: dict[str, type["Criterion"]] = {}


class Criterion:
    """Base class: subclasses set ``name`` and implement :meth:`scores`."""

    name: str = ""
    needs_data: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            CRITERIA[cls.name] = cls

    @property
    def cache_key(self) -> str:
        return self.name

    def scores(self, space: "PruningSpace", groups: list["ChannelGroup"], calibration: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def get_criterion(criterion: Any) -> Criterion:
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str):
        cls = CRITERIA.get(criterion)
        if cls is None:
            raise ValueError(f"unknown criterion {criterion!r}; available: {', '.join(sorted(CRITERIA))}")
        return cls()
    raise TypeError(f"criterion must be a name, a Criterion or a mapping of scores, got {type(criterion).__name__}")


def producers(group: "ChannelGroup") -> list["Member"]:
    return [m for m in group.members if m.role == "output"] or list(group.members)


def channel_rows(space: "PruningSpace", member: "Member", atom: int, tensor: torch.Tensor) -> torch.Tensor:
    """Reshape ``tensor`` (a parameter, or anything shaped like it) to (channels, -1) for one group.

    Every index of the member's dim that belongs to the group becomes part of its
    channel's row; channels of a product dim (heads) or of a range (a ``cat``
    part) are gathered the same way.
    """
    e = space._param_dims[member.param][member.dim]
    x = tensor.detach().movedim(member.dim, 0).reshape(tensor.shape[member.dim], -1)
    if len(e) == 1 and space.axes.find(e[0]) == atom:
        return x
    coords = space.axes.coords(e)[atom]
    inside = torch.nonzero(coords >= 0).flatten()
    order = inside[torch.argsort(coords[inside], stable=True)]
    return x[order].reshape(space.axes.size(atom), -1)


def aggregate(
    space: "PruningSpace",
    group: "ChannelGroup",
    members: Iterable["Member"],
    per_member: Callable[[torch.Tensor], torch.Tensor],
    tensors: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum over members of ``per_member(rows)`` normalised to mean 1."""
    named = tensors if tensors is not None else _named_tensors(space)
    total = torch.zeros(group.channels, dtype=torch.float64)
    for m in members:
        rows = channel_rows(space, m, group.atom, named[m.param])
        s = per_member(rows).to(torch.float64)
        mean = s.abs().mean()
        total += s / mean if mean > 0 else s
    return total


def _named_tensors(space: "PruningSpace") -> dict[str, torch.Tensor]:
    named = dict(space.model.named_parameters(remove_duplicate=False))
    named.update(dict(space.model.named_buffers(remove_duplicate=False)))
    return named


def weight_scores(
    space: "PruningSpace", groups: list["ChannelGroup"], per_member: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    named = _named_tensors(space)
    return {g.name: aggregate(space, g, producers(g), per_member, named) for g in groups}


def batches(calibration: Any) -> Iterable[tuple[tuple, Any]]:
    """Yield (inputs tuple, targets or None) from a calibration iterable."""
    for batch in calibration:
        if isinstance(batch, torch.Tensor):
            yield (batch,), None
        elif isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], (torch.Tensor, tuple, list)):
            x, y = batch
            yield (tuple(x) if isinstance(x, (tuple, list)) else (x,)), y
        elif isinstance(batch, (tuple, list)):
            yield tuple(batch), None
        else:
            raise TypeError(
                f"calibration batches must be tensors or (inputs, targets) pairs, got {type(batch).__name__}"
            )
