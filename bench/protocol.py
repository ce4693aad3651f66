"""The tuning protocol's rules, with no Optuna and no training (bench.tuning runs them).

One rule for every configuration of a grid:

1. **A designed candidate set.** The first 2^m points of a scrambled Sobol sequence (fixed seed)
   in (log10 lr, log10 head_lr) over the [tune] ranges. They are a (0, m, 2)-net: each of the 2^m
   equal strata of either axis holds exactly one point, so along either axis no gap between
   neighbouring candidates (or between a range end and its nearest candidate) is wider than two
   strata (16 points over lr 1e-5..1e-1: 0.5 decade; over head_lr 1e-3..1e-1: 0.25). The design
   never depends on any outcome. The linear probe, which has only a head rate, takes the design's
   head coordinates. A configuration that contains the probe also evaluates the *fallback*: the
   probe's own selected head rate with everything else at rest (lr = 0), so it can fall back to
   the probe by construction.
2. **Selection at the judged budget.** A candidate's value is its validation accuracy after the
   same training the seeds get (bench.tuning trains it as the seed-`seed` cell at those rates).
3. **The edge rule.** While the selected candidate lies in the outermost half-decade of what was
   tried along an axis, the candidates in that band are copied a half-decade further out and
   tuning continues (at most `max_extensions` times per side; the selection records how often).
4. **Neighbours.** The selection's neighbours at x/sqrt(10) and x*sqrt(10) along each axis are
   evaluated. With `refine` (the default), one that scores higher becomes the selection and its
   own neighbours are evaluated in turn (at most `max_moves` moves; the selection records how
   many), so the selection scores at least as high as each of its four neighbours: a local
   optimum at half-decade resolution, found rather than only flagged. The final selection's
   neighbours are its sensitivity record. Without `refine` (the protocol's first form, which the
   committed tuning and residual checks ran) neighbours are never selected.

`expected_max` is the tuning curve: the expected best validation accuracy of n candidates drawn
from the evaluated set without replacement (the unbiased estimator of Tang et al.; Dodge et al.
2019 draw with replacement). The tuning margin is E[max of all N] - E[max of N // 2].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from math import comb

from lorafit.errors import LorafitError

HALF_DECADE = 0.5  # in log10 units: the edge band, the extension step and the neighbours' offset
EPS = 1e-9
# Keys of the first protocol (pruned trials on a subset): refused with a reason, not ignored.
RETIRED_KEYS = {
    "trials": "candidates",
    "sampler": None,
    "pruner": None,
    "train_size": None,
    "epochs": None,
}


@dataclass(frozen=True)
class TuneSpec:
    """[tune] in a grid file: the same design for every configuration."""

    candidates: int = 16  # a power of two: the first 2^m points of the scrambled Sobol sequence
    seed: int = 0  # the design's scramble seed and the training seed of every candidate
    lr: tuple[float, float] = (1e-5, 1e-1)  # the adapter's (or the backbone's) rate: log range
    head_lr: tuple[float, float] = (1e-3, 1e-1)  # the new head's rate: log range
    max_extensions: int = 6  # the edge rule's cap, per axis and side (6 half-decades)
    sensitivity: bool = True  # evaluate the selection's x/sqrt(10), x*sqrt(10) neighbours
    refine: bool = True  # a neighbour that scores higher becomes the selection (rule 4)
    max_moves: int = 6  # rule 4's cap: moves to a better neighbour

    def __post_init__(self) -> None:
        n = self.candidates
        if not isinstance(n, int) or n < 2 or n & (n - 1):
            raise LorafitError(f"[tune] candidates must be a power of two >= 2 (a Sobol net), got {n!r}")
        for key in ("lr", "head_lr"):
            low, high = getattr(self, key)
            if not 0 < low < high:
                raise LorafitError(f"[tune] {key} must be [low, high] with 0 < low < high, got {[low, high]}")
        for key in ("seed", "max_extensions", "max_moves"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise LorafitError(f"[tune] {key} must be an integer >= 0, got {getattr(self, key)!r}")
        for key in ("sensitivity", "refine"):
            if not isinstance(getattr(self, key), bool):
                raise LorafitError(f"[tune] {key} must be true or false, got {getattr(self, key)!r}")
        if self.refine and not self.sensitivity:
            raise LorafitError(
                "[tune] refine needs sensitivity = true (it moves among the evaluated neighbours)"
            )

    @classmethod
    def from_table(cls, table: dict) -> TuneSpec:
        retired = sorted(set(table) & set(RETIRED_KEYS))
        if retired:
            key = retired[0]
            instead = f"; use {RETIRED_KEYS[key]}" if RETIRED_KEYS[key] else ""
            raise LorafitError(
                f"[tune] {key} belongs to the first tuning protocol (pruned trials on a subset): every "
                f"candidate now trains at the seeds' budget{instead}"
            )
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(table) - known)
        if bad:
            raise LorafitError(
                f"[tune] has unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(known))}"
            )
        values = dict(table)
        for key in ("lr", "head_lr"):
            if key in values:
                pair = values[key]
                if not (
                    isinstance(pair, list)
                    and len(pair) == 2
                    and all(isinstance(v, int | float) for v in pair)
                ):
                    raise LorafitError(f"[tune] {key} must be a [low, high] pair of numbers, got {pair!r}")
                values[key] = (float(pair[0]), float(pair[1]))
        return cls(**values)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Candidate:
    """One (lr, head_lr) point. role: design | extension | fallback | neighbour (rule 4 with
    refine: selectable) | sensitivity (without refine: never selected)."""

    id: str
    lr: float  # 0.0: everything but the head at rest (the fallback); the probe: its head rate
    head_lr: float
    role: str

    @property
    def eligible(self) -> bool:
        return self.role != "sensitivity"

    @property
    def designed(self) -> bool:
        """Part of the outcome-independent pool the tuning curve is drawn from (neighbours are
        chosen by outcomes, so they are not)."""
        return self.role in ("design", "extension", "fallback")

    def params(self, rates: tuple[str, ...]) -> dict[str, float]:
        return {r: getattr(self, r) for r in rates}

    def to_dict(self) -> dict:
        return asdict(self)


def _log_map(u: float, bounds: tuple[float, float]) -> float:
    low, high = math.log10(bounds[0]), math.log10(bounds[1])
    return float(10 ** (low + u * (high - low)))


def design(spec: TuneSpec, rates: tuple[str, ...]) -> list[Candidate]:
    """The designed candidates, the same for every configuration (the probe: their head rates)."""
    from scipy.stats import qmc

    points = qmc.Sobol(d=2, scramble=True, seed=spec.seed).random_base2(int(math.log2(spec.candidates)))
    out = []
    for i, (u_lr, u_head) in enumerate(points):
        head = _log_map(u_head, spec.head_lr)
        lr = _log_map(u_lr, spec.lr) if "lr" in rates else head
        out.append(Candidate(f"d{i:02d}", lr, head, "design"))
    return out


def contains_probe(method: str) -> bool:
    """Whether a configuration of `method` contains the linear probe: it trains the pretrained
    backbone's new head and something more, so with the rest at rest it is the probe (scratch has
    no pretrained backbone)."""
    return method not in ("head", "scratch")


def fallback(probe_head_lr: float) -> Candidate:
    """The probe's selected head rate with everything else at rest."""
    return Candidate("fallback", 0.0, probe_head_lr, "fallback")


def select(candidates: list[Candidate], values: dict[str, float]) -> Candidate:
    """The best evaluated eligible candidate (a failed one counts as -inf); ties: the earlier one."""
    pool = [c for c in candidates if c.eligible and c.id in values]
    if not pool:
        raise LorafitError("no candidate has been evaluated")

    def score(c: Candidate) -> float:
        v = values[c.id]
        return v if v is not None and math.isfinite(v) else -math.inf

    return max(pool, key=lambda c: (score(c), -pool.index(c)))


def _axis_values(candidates: list[Candidate], axis: str) -> list[float]:
    return [math.log10(getattr(c, axis)) for c in candidates if c.role in ("design", "extension")]


def edge_sides(candidates: list[Candidate], best: Candidate, rates: tuple[str, ...]) -> list[tuple[str, int]]:
    """(axis, side) pairs where `best` lies in the outermost half-decade of the tried values
    (side +1: the high end, -1: the low end). The fallback has no edge: its head rate is the
    probe's selection, bracketed in the probe's own study, and lr = 0 is below every rate."""
    if best.role == "fallback":
        return []
    sides = []
    for axis in rates:
        tried = _axis_values(candidates, axis)
        x = math.log10(getattr(best, axis))
        if x > max(tried) - HALF_DECADE + EPS:
            sides.append((axis, +1))
        if x < min(tried) + HALF_DECADE - EPS:
            sides.append((axis, -1))
    return sides


def extensions_made(candidates: list[Candidate], axis: str, side: int) -> int:
    """How many times the edge rule has extended `axis` on `side`."""
    prefix = f"{axis}{'+' if side > 0 else '-'}"
    return len({c.id.split(".")[0] for c in candidates if c.role == "extension" and c.id.startswith(prefix)})


def extend(candidates: list[Candidate], axis: str, side: int) -> list[Candidate]:
    """The edge rule's new candidates on one side: copies of the candidates in the outermost
    half-decade along `axis`, moved a half-decade further out (the other rate unchanged), so the
    band's spacing carries over and no new gap exceeds a half-decade."""
    tried = _axis_values(candidates, axis)
    edge = max(tried) if side > 0 else min(tried)
    band = [
        c
        for c in candidates
        if c.role in ("design", "extension") and abs(math.log10(getattr(c, axis)) - edge) < HALF_DECADE - EPS
    ]
    k = extensions_made(candidates, axis, side) + 1
    sign = "+" if side > 0 else "-"
    step = 10 ** (side * HALF_DECADE)
    out = []
    for j, c in enumerate(sorted(band, key=lambda c: c.id)):
        moved = {axis: getattr(c, axis) * step}
        lr = moved.get("lr", c.lr)
        head = moved.get("head_lr", c.head_lr)
        if axis == "head_lr" and c.lr == c.head_lr:  # the probe: lr mirrors its head rate
            lr = head
        out.append(Candidate(f"{axis}{sign}{k}.{j}", lr, head, "extension"))
    return out


def neighbours(best: Candidate, rates: tuple[str, ...]) -> list[Candidate]:
    """The selection's neighbours at x/sqrt(10) and x*sqrt(10) along each axis it has (lr = 0 has
    none), the other rate held: the sensitivity record."""
    out = []
    for axis in rates:
        if getattr(best, axis) == 0:
            continue
        for side, sign in ((-1, "-"), (1, "+")):
            value = getattr(best, axis) * 10 ** (side * HALF_DECADE)
            lr = value if axis == "lr" else best.lr
            head = value if axis == "head_lr" else best.head_lr
            if axis == "head_lr" and best.lr == best.head_lr:
                lr = head
            out.append(Candidate(f"s{axis}{sign}", lr, head, "sensitivity"))
    return out


def untried_neighbours(
    candidates: list[Candidate], best: Candidate, rates: tuple[str, ...], move: int
) -> list[Candidate]:
    """Rule 4 with refine: the neighbours of `best` no selectable candidate sits at yet, as
    selectable candidates (ids n<move><axis><side>, deterministic so a resumed stage finds them)."""
    out = []
    for nb in neighbours(best, rates):
        if not any(c.eligible and same_point(c, nb, rates) for c in candidates):
            out.append(Candidate(f"n{move}{nb.id.removeprefix('s')}", nb.lr, nb.head_lr, "neighbour"))
    return out


# Trains what it is given that has no result yet; returns every candidate's validation accuracy
# (None: failed). bench.tuning evaluates through Optuna trials; tests through a known surface.
Evaluate = Callable[[list[Candidate]], dict[str, float | None]]


def grow(
    evaluate: Evaluate, cands: list[Candidate], rates: tuple[str, ...], max_extensions: int, log=print
) -> tuple[Candidate, dict[str, float | None], list[str]]:
    """Rule 3: evaluate `cands` and extend past an edge until the selection lies inside what was
    tried (or the cap stops it); `cands` grows in place. Returns the selection, every candidate's
    value, and the sides where the cap stopped the rule."""
    capped = []
    while True:
        values = evaluate(cands)
        best = select(cands, values)
        new = []
        for axis, side in edge_sides(cands, best, rates):
            if extensions_made(cands, axis, side) >= max_extensions:
                capped.append(f"{axis}{'+' if side > 0 else '-'}")
            else:
                new += extend(cands, axis, side)
        if not new:
            return best, values, sorted(set(capped))
        log(f"  edge rule: {best.id} lies in the outermost half-decade; adding {len(new)} candidates")
        cands += new


def climb(
    evaluate: Evaluate,
    cands: list[Candidate],
    best: Candidate,
    rates: tuple[str, ...],
    max_moves: int,
    log=print,
) -> tuple[Candidate, dict[str, float | None], int, list[str]]:
    """Rule 4 with refine: evaluate the selection's neighbours; while one scores higher, it becomes
    the selection and its neighbours are evaluated (at most max_moves moves). `cands` grows in
    place. Returns the selection, every candidate's value, the moves made, and ["moves"] when the
    cap stopped the climb (the last selection's neighbours are then only the sensitivity record)."""
    moves = 0
    while True:
        cands += untried_neighbours(cands, best, rates, moves)
        values = evaluate(cands)
        better = select(cands, values)
        if better.id == best.id:
            return best, values, moves, []
        log(f"  neighbour rule: {better.id} scores above {best.id}; moving there")
        best, moves = better, moves + 1
        if moves >= max_moves:
            return best, values, moves, ["moves"]


def same_point(a: Candidate, b: Candidate, rates: tuple[str, ...]) -> bool:
    return all(math.isclose(getattr(a, r), getattr(b, r), rel_tol=1e-9, abs_tol=0.0) for r in rates)


def expected_max(values: list[float]) -> list[float]:
    """E[best of n candidates drawn without replacement] for n = 1..N (Tang et al.'s unbiased
    estimator of the expected-maximum tuning curve): sum_i v_(i) C(i-1, n-1) / C(N, n)."""
    v = sorted(x if x is not None and math.isfinite(x) else 0.0 for x in values)
    n_total = len(v)
    return [
        sum(v[i - 1] * comb(i - 1, n - 1) for i in range(n, n_total + 1)) / comb(n_total, n)
        for n in range(1, n_total + 1)
    ]


def margin(curve: list[float]) -> float:
    """The tuning margin: the estimated gain from the last half of the candidates."""
    if len(curve) < 2:
        return math.nan
    return curve[-1] - curve[len(curve) // 2 - 1]
