"""The channel-axis algebra on its own: unification, refinement, and index mapping."""

from __future__ import annotations

import pytest
import torch

from autoprune.engine.axes import AxisTable, Incompatible


def test_unify_refines_an_atom_into_the_factors_of_a_product():
    t = AxisTable()
    e = t.new(12)
    h, d = t.new(3), t.new(4)
    t.unify((e,), (h, d))  # a reshape of 12 channels into 3 heads x 4 dims
    keep = {t.find(h): torch.tensor([0, 2])}  # drop head 1
    assert t.kept_index((e,), keep, {}).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert t.polynomial((e,), {t.find(h): 0}) == {(0,): 4}


def test_ranges_split_an_axis_into_independent_parts():
    t = AxisTable()
    c = t.new(10)
    left, right = t.ranges((c,), [4])
    keep = {t.find(left[0]): torch.tensor([1]), t.find(right[0]): torch.tensor([0, 5])}
    assert t.kept_index((c,), keep, {}).tolist() == [1, 4, 9]


def test_a_sum_of_equal_parts_unifies_with_a_product():
    # cat([a, b]) viewed as (2, n): channel shuffle forces a and b to be pruned alike.
    t = AxisTable()
    a, b = t.new(4), t.new(4)
    s = t.make_sum([a, b])
    outer, inner = t.factor((s,), [2, 4])
    assert t.find(a) == t.find(b) == t.find(inner[0])
    assert t.expr_size(outer) == 2
    keep = {t.find(a): torch.tensor([1, 3])}
    assert t.kept_index((s,), keep, {}).tolist() == [1, 3, 5, 7]


def test_frozen_spreads_through_unification_and_refinement():
    t = AxisTable()
    x, y = t.new(8), t.new(8, frozen=True)
    t.unify((x,), (y,))
    assert t.is_frozen((x,))
    parts = t.ranges((x,), [3])
    assert all(t.is_frozen(p) for p in parts)


def test_incompatible_factorisations_raise():
    t = AxisTable()
    e = t.new(12)
    t.unify((e,), (t.new(6), t.new(2)))
    with pytest.raises(Incompatible):
        t.unify((e,), (t.new(4), t.new(3)))


def test_coords_map_each_index_to_its_channel():
    t = AxisTable()
    c, hw = t.new(3), t.new(4, frozen=True)
    coords = t.coords((c, hw))  # flatten of (C, H*W)
    assert coords[t.find(c)].tolist() == [0] * 4 + [1] * 4 + [2] * 4
