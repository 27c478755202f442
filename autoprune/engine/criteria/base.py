"""What a channel-importance criterion is, and the helpers they share.

A criterion scores every channel of the groups it is asked about; higher means
more important, and a group keeps its highest-scoring channels. It is given the
groups (each knows its parameter dims and where the forward pass carries its
channels), the model those groups belong to, and calibration batches when it
needs data; it never sees the analysis behind the groups. A group's channels run
through several layers: each layer's per-channel scores are normalised to mean 1
and then summed, so wide and narrow layers weigh the same. Weight criteria score
the layers whose *output* channels the group is (the filters); a group without
such a layer is scored by all of its parameters.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import nn

from ...utils import lookup
from ..groups import ChannelGroup, Member

CRITERIA: dict[str, type["Criterion"]] = {}


class Criterion(abc.ABC):
    """Base class: subclasses set ``name`` (which registers them) and implement :meth:`scores`."""

    name: ClassVar[str] = ""
    #: True when :meth:`scores` needs calibration batches (its scores are then never cached).
    needs_data: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            CRITERIA[cls.name] = cls

    @property
    def cache_key(self) -> str:
        """Scores of a data-free criterion are cached per space under this key (include options that change them)."""
        return self.name

    @abc.abstractmethod
    def scores(
        self, groups: Sequence[ChannelGroup], model: nn.Module, calibration: Any = None
    ) -> dict[str, torch.Tensor]:
        """Per-channel importance of each group.

        Args:
            groups: the groups to score.
            model: the unpruned model the groups were found in; leave it as it was.
            calibration: an iterable of batches (``inputs`` or ``(inputs, targets)``) when ``needs_data``.

        Returns:
            ``{group name: float64 tensor of group.channels scores}``.
        """


def get_criterion(criterion: Any) -> Criterion:
    """A criterion object from a registered name (or the object itself)."""
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str):
        return lookup(CRITERIA, criterion, "criterion")()
    raise TypeError(f"criterion must be a name, a Criterion or a mapping of scores, got {type(criterion).__name__}")


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` by name (shared ones under each of their names)."""
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(dict(model.named_buffers(remove_duplicate=False)))
    return named


def aggregate(
    group: ChannelGroup,
    members: Iterable[Member],
    per_member: Callable[[torch.Tensor], torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Sum over ``members`` of ``per_member(rows)`` (one score per channel), each normalised to mean 1."""
    total = torch.zeros(group.channels, dtype=torch.float64)
    for m in members:
        s = per_member(m.channel_rows(tensors[m.param], group.channels)).to(torch.float64)
        mean = s.abs().mean()
        total += s / mean if mean > 0 else s
    return total


def weight_scores(
    groups: Sequence[ChannelGroup], model: nn.Module, per_member: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Score each group's filters (its producers) with ``per_member`` on their weights."""
    named = named_tensors(model)
    return {g.name: aggregate(g, g.producers, per_member, named) for g in groups}


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
