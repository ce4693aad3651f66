"""The tuning protocol's rules (bench.protocol): the design, the edge rule, the neighbours, the
selection and the tuning curve."""

import itertools
import math

import numpy as np
import pytest

from bench import protocol
from bench.protocol import TuneSpec
from lorafit.errors import LorafitError

RATES = ("lr", "head_lr")


def _unit(values, bounds):
    lo, hi = math.log10(bounds[0]), math.log10(bounds[1])
    return [(math.log10(v) - lo) / (hi - lo) for v in values]


@pytest.mark.parametrize("n", [4, 16, 32])
def test_design_is_a_net_without_wide_gaps(n):
    spec = TuneSpec(candidates=n)
    cands = protocol.design(spec, RATES)
    assert len(cands) == n and len({(c.lr, c.head_lr) for c in cands}) == n
    for axis in RATES:
        bounds = getattr(spec, axis)
        u = sorted(_unit([getattr(c, axis) for c in cands], bounds))
        assert sorted(int(x * n) for x in u) == list(range(n))  # one candidate per stratum
        span = math.log10(bounds[1]) - math.log10(bounds[0])
        assert np.diff([0.0, *u, 1.0]).max() * span < 2 * span / n + 1e-12  # gaps under two strata
    if n == 16:  # the shipped design: no gap wider than a half-decade along either axis
        for axis in RATES:
            logs = sorted(math.log10(getattr(c, axis)) for c in cands)
            assert max(np.diff(logs)) <= 0.5 and logs[0] - math.log10(getattr(spec, axis)[0]) <= 0.25
    # the same points for every configuration; the probe takes their head rates
    assert protocol.design(spec, RATES) == cands
    assert [c.head_lr for c in protocol.design(spec, ("head_lr",))] == [c.head_lr for c in cands]


def test_edge_rule_extends_a_set_whose_best_sits_on_its_boundary():
    cands = protocol.design(TuneSpec(candidates=8), RATES)
    top = max(cands, key=lambda c: c.lr)
    values = {c.id: 0.5 for c in cands} | {top.id: 0.9}
    best = protocol.select(cands, values)
    assert best == top and ("lr", 1) in protocol.edge_sides(cands, best, RATES)
    new = protocol.extend(cands, "lr", 1)
    assert new and all(c.role == "extension" and c.id.startswith("lr+1.") for c in new)
    assert max(c.lr for c in new) == pytest.approx(top.lr * 10**0.5)
    assert {c.head_lr for c in new} <= {c.head_lr for c in cands}  # the other rate is kept
    grown = cands + new

    def widest(cs):
        return max(np.diff(sorted(math.log10(c.lr) for c in cs)))

    assert widest(grown) <= max(widest(cands), 0.5) + 1e-9  # no new gap wider than a half-decade
    assert ("lr", 1) not in protocol.edge_sides(grown, best, RATES)  # now a half-decade inside
    assert protocol.extensions_made(grown, "lr", 1) == 1 and protocol.extensions_made(grown, "lr", -1) == 0
    # an interior best adds nothing
    middle = sorted(cands, key=lambda c: c.lr)[len(cands) // 2]
    interior = [s for s in protocol.edge_sides(cands, middle, RATES) if s[0] == "lr"]
    assert interior == []


def test_fallback_has_no_edge_and_neighbours_skip_lr_zero():
    cands = protocol.design(TuneSpec(candidates=4), RATES) + [protocol.fallback(0.02)]
    values = {c.id: 0.1 for c in cands} | {"fallback": 0.5}
    best = protocol.select(cands, values)
    assert best.role == "fallback" and protocol.edge_sides(cands, best, RATES) == []
    nbs = protocol.neighbours(best, RATES)
    assert [n.id for n in nbs] == ["shead_lr-", "shead_lr+"] and all(n.lr == 0 for n in nbs)
    assert [n.head_lr for n in nbs] == pytest.approx([0.02 / 10**0.5, 0.02 * 10**0.5])
    assert not any(n.eligible for n in nbs)


def test_selection_ignores_neighbours_and_breaks_ties_by_order():
    cands = protocol.design(TuneSpec(candidates=4), RATES)
    nb = protocol.neighbours(cands[1], RATES)[0]
    values = {c.id: 0.5 for c in cands} | {nb.id: 0.99}
    assert protocol.select(cands + [nb], values) == cands[0]  # the first of the tied
    values[cands[2].id] = float("nan")  # a failed candidate never wins
    assert protocol.select(cands, values | {cands[0].id: None}) == cands[1]


def test_expected_max_is_the_unbiased_tuning_curve():
    values = [0.3, 0.1, 0.4, 0.2, 0.25]
    curve = protocol.expected_max(values)
    for n, e in enumerate(curve, start=1):  # brute force over every subset of size n
        subsets = list(itertools.combinations(values, n))
        assert e == pytest.approx(sum(max(s) for s in subsets) / len(subsets))
    assert curve[-1] == max(values) and curve[0] == pytest.approx(np.mean(values))
    assert protocol.margin(curve) == pytest.approx(curve[-1] - curve[1])
    assert math.isnan(protocol.margin([0.5]))


def _surface(f):
    """A protocol.Evaluate on a known surface instead of training, counting what it evaluates."""
    runs: list[str] = []

    def evaluate(cands):
        runs.extend(c.id for c in cands if c.id not in runs)
        return {c.id: f(c) for c in cands}

    evaluate.runs = runs
    return evaluate


def _peak(lr: float, head: float):
    """A smooth single-peaked surface over log rates."""
    return lambda c: 1.0 - (math.log10(c.lr / lr)) ** 2 - (math.log10(c.head_lr / head)) ** 2


def test_neighbour_rule_climbs_to_a_local_optimum():
    cands = protocol.design(TuneSpec(candidates=4), RATES)
    peak = _peak(lr=cands[0].lr * 10**1.5, head=cands[0].head_lr)
    start = protocol.select(cands, {c.id: peak(c) for c in cands})
    best, values, moves, capped = protocol.climb(_surface(peak), cands, start, RATES, 6, log=lambda m: None)
    assert moves >= 1 and capped == [] and best.role == "neighbour"
    around = [
        c for c in cands if any(protocol.same_point(c, n, RATES) for n in protocol.neighbours(best, RATES))
    ]
    assert len(around) == 4 and all(values[c.id] <= values[best.id] for c in around)
    assert values[best.id] == max(values.values())  # the selection is the best of all tried
    # Deterministic ids: a resumed stage regenerates the same candidates and finds their trials.
    again = protocol.design(TuneSpec(candidates=4), RATES)
    assert protocol.climb(_surface(peak), again, start, RATES, 6, log=lambda m: None)[0] == best
    assert [c.id for c in again] == [c.id for c in cands]
    # An interior best moves nowhere; the cap stops a long climb and says so.
    fresh = protocol.design(TuneSpec(candidates=4), RATES)
    flat = _peak(start.lr, start.head_lr)
    assert protocol.climb(_surface(flat), fresh, start, RATES, 6, log=lambda m: None)[2:] == (0, [])
    far = _peak(lr=cands[0].lr * 10**3, head=cands[0].head_lr)
    fresh = protocol.design(TuneSpec(candidates=4), RATES)
    assert protocol.climb(_surface(far), fresh, start, RATES, 1, log=lambda m: None)[2:] == (1, ["moves"])


def test_edge_rule_grows_until_the_selection_is_inside():
    cands = protocol.design(TuneSpec(candidates=4), RATES)
    top = max(cands, key=lambda c: c.lr)
    far = _peak(lr=top.lr * 10**2, head=top.head_lr)
    evaluate = _surface(far)
    best, values, capped = protocol.grow(evaluate, cands, RATES, 6, log=lambda m: None)
    assert capped == [] and ("lr", 1) not in protocol.edge_sides(cands, best, RATES)
    assert best.lr > top.lr and set(evaluate.runs) == {c.id for c in cands}
    few = protocol.design(TuneSpec(candidates=4), RATES)
    assert protocol.grow(_surface(far), few, RATES, 1, log=lambda m: None)[2] == ["lr+"]


def test_refine_needs_the_neighbours():
    with pytest.raises(LorafitError, match="refine needs sensitivity"):
        TuneSpec(sensitivity=False)
    assert TuneSpec(sensitivity=False, refine=False).refine is False
