"""The tuning protocol's rules (bench.protocol): the design, the edge rule, the neighbours, the
selection and the tuning curve."""

import itertools
import math

import numpy as np
import pytest

from bench import protocol
from bench.protocol import TuneSpec

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
