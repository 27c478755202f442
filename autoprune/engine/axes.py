"""Channel axes: the algebra every coupling is expressed in.

Each tensor dimension seen while tracing is described by an *expression*: a
tuple of axis ids whose sizes multiply to the dimension's size, in row-major
order (size-1 axes are left out, so a size-1 dimension is the empty tuple).

An axis is a node in a union-find. Two axes that must be pruned together (the
output channels of a conv and the input channels of the next one) are unified.
An axis may later be *refined*:

- into a product, when a reshape splits it (``E -> (heads, head_dim)``, a
  grouped conv's ``C -> (groups, C/groups)``, ``flatten`` in reverse);
- into a sum of consecutive ranges, when it is sliced, split, concatenated or
  padded (``cat``, ``chunk``, ``narrow``, channel padding).

After tracing, the atomic (unrefined) axes that are not frozen and that some
parameter depends on are the prunable channel groups. Any index set kept per
atomic axis maps back to every dimension through its expression, which is what
makes removal consistent across coupled layers.

Frozen axes are never pruned: model inputs and outputs, spatial and batch
dimensions, and anything an unknown op touched. Freezing is monotone, so an
operation on an already frozen expression may simply produce fresh frozen axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Iterator

import torch

ATOM, PRODUCT, SUM = 0, 1, 2

Expr = tuple[int, ...]


class Incompatible(Exception):
    """Two descriptions of one index space cannot be reconciled (pruning there is frozen)."""


@dataclass
class _Node:
    size: int
    frozen: bool
    kind: int = ATOM
    children: list[int] = field(default_factory=list)


class AxisTable:
    """Union-find over channel axes with product / sum refinements."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._nodes: list[_Node] = []

    # -- creation and lookup -------------------------------------------------
    def new(self, size: int, frozen: bool = False) -> int:
        self._parent.append(len(self._parent))
        self._nodes.append(_Node(size, frozen))
        return len(self._parent) - 1

    def new_expr(self, size: int, frozen: bool) -> Expr:
        return () if size == 1 else (self.new(size, frozen),)

    def find(self, a: int) -> int:
        parent = self._parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def node(self, a: int) -> _Node:
        return self._nodes[self.find(a)]

    def size(self, a: int) -> int:
        return self._nodes[self.find(a)].size

    def expr_size(self, expr: Expr) -> int:
        return prod(self.size(a) for a in expr)

    def __len__(self) -> int:
        return len(self._parent)

    # -- structure -------------------------------------------------------------
    def leaves(self, expr: Expr) -> list[int]:
        """Product normal form: roots that are atoms or sums, products expanded."""
        out: list[int] = []
        for a in expr:
            r = self.find(a)
            n = self._nodes[r]
            if n.kind == PRODUCT:
                out.extend(self.leaves(tuple(n.children)))
            elif n.size > 1:
                out.append(r)
        return out

    def atoms(self, expr: Expr) -> list[int]:
        """Every atomic root the expression depends on (through products and sums)."""
        out: list[int] = []
        stack = list(reversed(expr))
        while stack:
            r = self.find(stack.pop())
            n = self._nodes[r]
            if n.kind == ATOM:
                out.append(r)
            else:
                stack.extend(reversed(n.children))
        return out

    def is_frozen(self, expr: Expr) -> bool:
        return all(self._nodes[r].frozen for r in self.atoms(expr))

    def frozen_atom(self, expr: Expr) -> Iterator[bool]:
        """For each atom of ``expr`` of size > 1: whether it is frozen."""
        return (self._nodes[r].frozen for r in self.atoms(expr) if self._nodes[r].size > 1)

    def freeze(self, expr: Expr) -> None:
        for r in self.atoms(expr):
            self._nodes[r].frozen = True
        for a in expr:
            self._nodes[self.find(a)].frozen = True

    def _define(self, a: int, kind: int, sizes: list[int]) -> list[int]:
        """Refine atom ``a`` into fresh children (inheriting frozenness)."""
        n = self._nodes[a]
        children = [self.new(s, n.frozen) for s in sizes]
        n.kind, n.children = kind, children
        return children

    def make_product(self, parts: list[int]) -> int:
        parts = [p for p in parts if self.size(p) > 1]
        if not parts:
            return self.new(1, frozen=True)
        if len(parts) == 1:
            return parts[0]
        a = self.new(prod(self.size(p) for p in parts))
        n = self._nodes[a]
        n.kind, n.children = PRODUCT, list(parts)
        n.frozen = all(self._nodes[self.find(p)].frozen for p in parts)
        return a

    def make_sum(self, parts: list[int]) -> int:
        if len(parts) == 1:
            return parts[0]
        a = self.new(sum(self.size(p) for p in parts))
        n = self._nodes[a]
        n.kind, n.children = SUM, list(parts)
        n.frozen = all(self.is_frozen((p,)) for p in parts)
        return a

    def as_axis(self, expr: Expr) -> int:
        """One axis standing for the whole expression (a size-1 expression gets a frozen axis)."""
        if not expr:
            return self.new(1, frozen=True)
        return self.make_product(list(expr))

    # -- refinement --------------------------------------------------------------
    def split_product(self, leaf: int, outer: int) -> list[int]:
        """Describe leaf (an atom or a sum root) as a product ``[outer, size/outer]``."""
        r = self.find(leaf)
        n = self._nodes[r]
        if n.size % outer:
            raise Incompatible
        inner = n.size // outer
        if n.kind == ATOM:
            return self._define(r, PRODUCT, [outer, inner])
        # A sum whose parts are whole rows of the product: each part is
        # Product[rows_j, inner] with one shared inner axis.
        parts = list(n.children)
        if any(self.size(p) % inner for p in parts):
            raise Incompatible
        b = self.new(inner, n.frozen)
        rows = []
        for p in parts:
            k = self.size(p) // inner
            row = self.new(k, k == 1 or self.is_frozen((p,)))
            rows.append(row)
            self.unify((p,), (row, b) if k > 1 else (b,))
        return [self.make_sum(rows), b]

    def split_range(self, a: int, offset: int) -> tuple[int, int]:
        """Return axes (left, right) with ``a == Sum(left, right)`` and size(left) == offset."""
        r = self.find(a)
        n = self._nodes[r]
        if not 0 < offset < n.size:
            raise ValueError("split offset out of range")
        if n.kind == ATOM:
            left, right = self._define(r, SUM, [offset, n.size - offset])
            return left, right
        if n.kind == SUM:
            pos = 0
            for i, p in enumerate(list(n.children)):
                ps = self.size(p)
                if pos == offset:
                    return self.make_sum(n.children[:i]), self.make_sum(n.children[i:])
                if pos < offset < pos + ps:
                    pl, pr = self.split_range(p, offset - pos)
                    n.children[i : i + 1] = [pl, pr]
                    return self.make_sum(n.children[: i + 1]), self.make_sum(n.children[i + 1 :])
                pos += ps
            raise AssertionError("unreachable")
        leaves = self.leaves((r,))
        rest = prod(self.size(x) for x in leaves[1:])
        if offset % rest:
            raise Incompatible
        hl, hr = self.split_range(leaves[0], offset // rest)
        return self.make_product([hl, *leaves[1:]]), self.make_product([hr, *leaves[1:]])

    def ranges(self, expr: Expr, bounds: list[int]) -> list[Expr]:
        """Cut the index space of ``expr`` at ``bounds`` (increasing, exclusive of 0 and size)."""
        total = self.expr_size(expr)
        if not bounds:
            return [expr]
        if self.is_frozen(expr):
            edges = [0, *bounds, total]
            return [self.new_expr(b - a, True) for a, b in zip(edges, edges[1:])]
        rest = self.as_axis(expr)
        out: list[Expr] = []
        pos = 0
        for b in bounds:
            left, rest = self.split_range(rest, b - pos)
            out.append(self._expr_of(left))
            pos = b
        out.append(self._expr_of(rest))
        return out

    def _expr_of(self, a: int) -> Expr:
        return () if self.size(a) == 1 else (a,)

    def factor(self, expr: Expr, sizes: list[int]) -> list[Expr]:
        """Describe ``expr`` as consecutive row-major dimensions of the given sizes."""
        if self.is_frozen(expr):
            return [self.new_expr(s, True) for s in sizes]
        queue = self.leaves(expr)
        out: list[Expr] = []
        for s in sizes:
            taken: list[int] = []
            have = 1
            while have < s:
                if not queue:
                    raise Incompatible
                x = queue.pop(0)
                xs = self.size(x)
                if have * xs <= s:
                    taken.append(x)
                    have *= xs
                else:
                    need = s // have
                    if s % have or xs % need:
                        raise Incompatible
                    first, second = self.split_product(x, need)
                    queue[:0] = self.leaves((second,)) if self.size(second) > 1 else []
                    if self.size(first) > 1:
                        taken.append(first)
                    have *= need
            out.append(tuple(taken))
        if queue:
            raise Incompatible
        return out

    # -- unification -------------------------------------------------------------
    def unify(self, ea: Expr, eb: Expr) -> None:
        """Declare two expressions the same index space (same size, row-major)."""
        if self.expr_size(ea) != self.expr_size(eb):
            raise Incompatible
        fa, fb = self.is_frozen(ea), self.is_frozen(eb)
        if fa and fb:
            return
        if fa or fb:
            self.freeze(ea)
            self.freeze(eb)
            return
        la, lb = self.leaves(ea), self.leaves(eb)
        while la and lb:
            x, y = self.find(la[0]), self.find(lb[0])
            sx, sy = self._nodes[x].size, self._nodes[y].size
            if sx == sy:
                self._unify_leaf(x, y)
                la.pop(0)
                lb.pop(0)
            elif sx < sy:
                first, second = self.split_product(y, sx)
                lb[0:1] = self.leaves((first,)) + self.leaves((second,))
            else:
                first, second = self.split_product(x, sy)
                la[0:1] = self.leaves((first,)) + self.leaves((second,))
        if la or lb:
            raise Incompatible

    def _union(self, keep: int, drop: int) -> None:
        frozen = self._nodes[keep].frozen or self._nodes[drop].frozen
        self._parent[drop] = keep
        if frozen:
            self.freeze((keep,))

    def _unify_leaf(self, x: int, y: int) -> None:
        x, y = self.find(x), self.find(y)
        if x == y:
            return
        nx, ny = self._nodes[x], self._nodes[y]
        if nx.kind == ATOM:
            self._union(y, x)
        elif ny.kind == ATOM:
            self._union(x, y)
        elif nx.kind == SUM and ny.kind == SUM:
            self._unify_parts(nx.children, ny.children)
            self._union(x, y)
        elif nx.kind == PRODUCT and ny.kind == PRODUCT:
            self.unify(tuple(nx.children), tuple(ny.children))
            self._union(x, y)
        else:
            s, p = (x, y) if nx.kind == SUM else (y, x)
            leaves = self.leaves((p,))
            outer, inner = self.split_product(s, self.size(leaves[0]))
            self.unify((outer, inner), tuple(leaves))
            self._union(p, s)

    def _unify_parts(self, px: list[int], py: list[int]) -> None:
        px, py = list(px), list(py)
        while px and py:
            sx, sy = self.size(px[0]), self.size(py[0])
            if sx == sy:
                self.unify((px.pop(0),), (py.pop(0),))
            elif sx < sy:
                py[0:1] = list(self.split_range(py[0], sx))
            else:
                px[0:1] = list(self.split_range(px[0], sy))
        if px or py:
            raise Incompatible

    # -- evaluation ----------------------------------------------------------------
    def kept_index(self, expr: Expr, keep: dict[int, torch.Tensor], cache: dict[int, torch.Tensor]) -> torch.Tensor:
        """Indices of ``expr`` kept when each atom ``r`` keeps ``keep[r]`` (all if absent)."""
        idx = torch.zeros(1, dtype=torch.long)
        for a in expr:
            sub = self._kept_axis(self.find(a), keep, cache)
            idx = (idx[:, None] * self.size(a) + sub[None, :]).reshape(-1)
        return idx

    def _kept_axis(self, r: int, keep: dict[int, torch.Tensor], cache: dict[int, torch.Tensor]) -> torch.Tensor:
        hit = cache.get(r)
        if hit is not None:
            return hit
        n = self._nodes[r]
        if n.kind == ATOM:
            out = keep.get(r)
            if out is None:
                out = torch.arange(n.size)
        elif n.kind == PRODUCT:
            out = self.kept_index(tuple(n.children), keep, cache)
        else:
            pieces, pos = [], 0
            for c in n.children:
                pieces.append(self._kept_axis(self.find(c), keep, cache) + pos)
                pos += self.size(c)
            out = torch.cat(pieces)
        cache[r] = out
        return out

    def coords(self, expr: Expr) -> dict[int, torch.Tensor]:
        """For each atom of ``expr``: the atom's index at every flat index (-1 where absent)."""
        total = self.expr_size(expr)
        out: dict[int, torch.Tensor] = {}
        stride = total
        flat = torch.arange(total)
        for a in expr:
            s = self.size(a)
            stride //= s
            local = (flat // stride) % s
            for atom, c in self._coords_axis(self.find(a)).items():
                out[atom] = c[local]
        return out

    def _coords_axis(self, r: int) -> dict[int, torch.Tensor]:
        n = self._nodes[r]
        if n.kind == ATOM:
            return {r: torch.arange(n.size)}
        if n.kind == PRODUCT:
            return self.coords(tuple(n.children))
        out: dict[int, torch.Tensor] = {}
        pos = 0
        for c in n.children:
            cs = self.size(c)
            for atom, sub in self._coords_axis(self.find(c)).items():
                full = out.setdefault(atom, torch.full((n.size,), -1, dtype=torch.long))
                full[pos : pos + cs] = sub
            pos += cs
        return out

    def polynomial(self, expr: Expr, var: dict[int, int]) -> dict[tuple[int, ...], int]:
        """Size of ``expr`` as a polynomial: {sorted tuple of variable ids: coefficient}.

        Atoms in ``var`` are variables (their kept count); other atoms are constants.
        """
        poly: dict[tuple[int, ...], int] = {(): 1}
        for a in expr:
            poly = poly_mul(poly, self._poly_axis(self.find(a), var))
        return poly

    def _poly_axis(self, r: int, var: dict[int, int]) -> dict[tuple[int, ...], int]:
        n = self._nodes[r]
        if n.kind == ATOM:
            v = var.get(r)
            return {(): n.size} if v is None else {(v,): 1}
        if n.kind == PRODUCT:
            return self.polynomial(tuple(n.children), var)
        out: dict[tuple[int, ...], int] = {}
        for c in n.children:
            for k, v in self._poly_axis(self.find(c), var).items():
                out[k] = out.get(k, 0) + v
        return out


def poly_mul(p: dict[tuple[int, ...], int], q: dict[tuple[int, ...], int]) -> dict[tuple[int, ...], int]:
    out: dict[tuple[int, ...], int] = {}
    for ka, va in p.items():
        for kb, vb in q.items():
            k = tuple(sorted(ka + kb))
            out[k] = out.get(k, 0) + va * vb
    return out


def poly_add(into: dict[tuple[int, ...], int], p: dict[tuple[int, ...], int], scale: int = 1) -> None:
    for k, v in p.items():
        into[k] = into.get(k, 0) + v * scale
