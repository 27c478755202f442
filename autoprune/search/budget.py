"""Budgets: how small the pruned model must be, checked analytically before anything is built.

A proposed plan is *projected* onto the budget (as AMC's action wall and
AutoCompress's allocation do, here for any strategy): its keep ratios
``r = 1 - s`` are scaled by one global factor ``alpha`` and clipped to
``[r_min, 1]``; bisection finds the largest ``alpha`` whose plan meets every
limit. The plan keeps its shape (which layers are pruned more), and a budget
that is met with room to spare is filled up, so no candidate wastes budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..engine import PruningSpace
from ..engine.latency import LatencyTable

METRICS = ("macs", "params", "latency")


@dataclass(frozen=True)
class Budget:
    """Upper limits on the pruned model: a fraction of the original (``<= 1``) or an absolute count.

    ``Budget(macs=0.5)`` keeps at most half the MACs; ``Budget(params=2e6)`` at most two
    million parameters; ``Budget(latency=0.6)`` at most 60% of the full model's latency
    (``latency=3.5``: 3.5 ms); several limits apply together. A
    :class:`~autoprune.engine.latency.LatencyTable` predicts latency to propose and
    project plans; the search then measures each candidate under the table's
    conditions and holds it to the budget as measured (``search(verify_latency=True)``).
    """

    macs: float | None = None
    params: float | None = None
    latency: float | None = None

    def __post_init__(self) -> None:
        for name in METRICS:
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0):
                raise ValueError(
                    f"Budget({name}=...) must be a positive number (a fraction <= 1 or an absolute count), got {v!r}"
                )
        if all(getattr(self, n) is None for n in METRICS):
            raise ValueError(
                "Budget needs at least one limit: Budget(macs=0.5), Budget(params=0.5) or Budget(latency=0.5)"
            )

    def to_dict(self) -> dict[str, float]:
        return {n: getattr(self, n) for n in METRICS if getattr(self, n) is not None}

    def targets(self, space: PruningSpace, latency_table: LatencyTable | None = None) -> dict[str, float]:
        """Absolute limits for this space's model, keyed by cost (``macs``, ``params``, ``latency_ms``).

        A latency limit needs the space's ``latency_table`` (its fraction is of the predicted full latency).
        """
        out: dict[str, float] = {}
        for n, v in self.to_dict().items():
            if n == "latency":
                if latency_table is None:
                    raise ValueError("a latency budget needs a latency table: LatencyTable.build(space)")
                out["latency_ms"] = v * latency_table.predict({}) if v <= 1 else float(v)
            else:
                out[n] = int(v * (space.macs({}) if n == "macs" else space.params({}))) if v <= 1 else int(v)
        return out


class Projector:
    """Projects plans of one space onto one budget; fails early if the budget is unreachable.

    A latency budget uses ``latency_table`` (built with ``LatencyTable.build(space)`` when not given).
    With ``verify_latency`` (the default) the search measures every candidate beside the
    unpruned model and judges the latency limit by that measurement
    (:meth:`measured_excess`); :meth:`calibrate` then scales the table's predictions by
    what the measurements so far say about its bias, so that projected plans land
    under the budget as measured, not only as predicted. A measurement is noisy (about
    ±1–2% of the full latency on a shared CPU), so a verified candidate must measure
    under the budget less ``latency_margin`` (a fraction of the budget): one that
    passes then still meets the budget when measured again.
    """

    #: the quantile of the measured/predicted latency ratios that :meth:`calibrate` scales predictions by:
    #: about three in four candidates projected after calibration meet the budget when measured
    CALIBRATION_QUANTILE = 0.75

    def __init__(
        self,
        space: PruningSpace,
        budget: Budget | None,
        max_sparsity: float = 0.95,
        latency_table: LatencyTable | None = None,
        verify_latency: bool = True,
        latency_margin: float = 0.03,
    ) -> None:
        if not 0 <= latency_margin < 1:
            raise ValueError(f"latency_margin must be in [0, 1) (a fraction of the budget), got {latency_margin!r}")
        self.space = space
        self.budget = budget
        self.names = [g.name for g in space.groups]
        self.max_sparsity = max_sparsity
        if latency_table is None and budget is not None and budget.latency is not None:
            latency_table = LatencyTable.build(space)
        self.latency_table = latency_table
        self.targets = budget.targets(space, latency_table) if budget is not None else {}
        self.verify_latency = bool(verify_latency) and "latency_ms" in self.targets
        self.latency_margin = float(latency_margin) if self.verify_latency else 0.0
        self.latency_scale = 1.0  # measured / predicted latency, from calibrate(); 1 until something is measured
        if budget is not None:
            smallest = {g: max_sparsity for g in self.names}
            for metric, target in self.targets.items():
                low = self.cost(metric, smallest)
                full = self.cost(metric, {})
                if low > target:
                    show = (lambda v: f"{v:.3f} ms") if metric == "latency_ms" else (lambda v: f"{v:,} {metric}")
                    raise ValueError(
                        f"the {metric} budget is unreachable: it asks for at most {show(target)} "
                        f"({target / full:.1%} of the original {show(full)}), but the smallest model this "
                        f"space can build (every group at sparsity {max_sparsity}) has {show(low)} "
                        f"({low / full:.1%}). Raise the budget or exclude fewer layers."
                    )

    def cost(self, metric: str, plan: Mapping[str, float]) -> float:
        """The plan's cost as the projection sees it: latency is the table's prediction times ``latency_scale``."""
        if metric == "latency_ms":
            return self.latency_table.predict(plan) * self.latency_scale
        return self.space.macs(plan) if metric == "macs" else self.space.params(plan)

    def costs(self, plan: Mapping[str, float]) -> dict[str, float]:
        """Analytic MACs and parameters, and the table's (uncalibrated) ``latency_ms`` when there is a table."""
        out: dict[str, float] = {"macs": self.space.macs(plan), "params": self.space.params(plan)}
        if self.latency_table is not None:
            out["latency_ms"] = self.latency_table.predict(plan)
        return out

    def limit(self, metric: str) -> float:
        """The limit a candidate must meet: the budget's, less ``latency_margin`` for a measured latency."""
        return self.targets[metric] * (1.0 - self.latency_margin if metric == "latency_ms" else 1.0)

    def measured_excess(self, measured: Mapping[str, float]) -> float:
        """How far a measured candidate (:meth:`LatencyTable.measure`) is over its latency limit, in ms (<= 0: meets).

        A fractional budget compares the measured fraction of the unpruned model's latency
        (measured beside it, so machine drift cancels), expressed in the table's
        milliseconds; an absolute budget compares the measured milliseconds.
        """
        fraction = self.budget.latency <= 1
        ms = measured["ratio"] * self.latency_table.full_ms if fraction else measured["ms"]
        return ms - self.limit("latency_ms")

    def calibrate(self, samples: list[tuple[float, Mapping[str, float]]]) -> float:
        """Set ``latency_scale`` from ``(predicted_ms, measurement)`` pairs of evaluated candidates; returns it.

        Each pair gives the table's bias on one network (measured fraction over
        predicted fraction; milliseconds for an absolute budget); the scale is their
        :attr:`CALIBRATION_QUANTILE`, so that later projections aim under the budget as measured.
        """
        full = self.latency_table.full_ms if self.latency_table is not None else 1.0
        fraction = self.budget is not None and self.budget.latency is not None and self.budget.latency <= 1
        bias = [
            (m["ratio"] / (p / full)) if fraction else m["ms"] / p
            for p, m in samples
            if p > 0 and m.get("ratio", 0) > 0
        ]
        self.latency_scale = float(np.quantile(bias, self.CALIBRATION_QUANTILE)) if bias else 1.0
        return self.latency_scale

    def fits(self, plan: Mapping[str, float]) -> bool:
        return all(self.cost(m, plan) <= self.limit(m) for m in self.targets)

    def project(
        self, plan: Mapping[str, float], *, fill: bool = True, floor: Mapping[str, float] | None = None
    ) -> dict[str, float] | None:
        """The plan scaled to meet the budget (exactly, when ``fill``; else only shrunk if over).

        ``floor``: per group, a sparsity the result never goes below (a network already pruned that far, whose
        removed channels cannot come back). Returns None when no scaling meets it (cannot happen for a reachable
        budget).
        """
        low = np.array([float((floor or {}).get(n, 0.0)) for n in self.names])
        s = np.array([min(max(float(plan.get(n, 0.0)), 0.0), self.max_sparsity) for n in self.names])
        s = np.maximum(s, low)
        if not self.targets:
            return dict(zip(self.names, s.tolist()))
        keep = 1.0 - s
        r_min = np.minimum(1.0 - self.max_sparsity, 1.0 - low)

        def at(alpha: float) -> dict[str, float]:
            r = np.clip(alpha * keep, r_min, 1.0 - low)
            return dict(zip(self.names, (1.0 - r).tolist()))

        if self.fits(at(1.0)) and not fill:
            return at(1.0)
        lo, hi = 0.0, 1.0 / max(keep.min(), 1e-9)
        if not self.fits(at(lo)):
            return None
        if self.fits(at(hi)):
            return at(hi)
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.fits(at(mid)):
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-6:
                break
        return at(lo)

    def uniform(self) -> dict[str, float]:
        """The same sparsity for every group, as large as needed and no larger (bisection)."""
        return self.project({n: 0.0 for n in self.names}, fill=True) if self.targets else {n: 0.0 for n in self.names}
