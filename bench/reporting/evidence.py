"""Evidence that the comparisons are fair, from the stored records alone: each row's tuning
(selected rates, candidates, edge extensions, tuning margin, sensitivity) and the containment
checks (a configuration below one it contains, beyond paired noise).

Containment: A contains B when every function B can represent, A can too, from the same
pretrained backbone and head initialisation, so tuned well A should not be below B:
- adapter ⊇ probe: every configuration that trains the head and more (not scratch);
- full ⊇ every other configuration of the backbone (every adapter merges into its weights);
- rank nesting: LoRA, DoRA and LoHa at a higher rank on the same layers (OFT: a block size that is
  a multiple), everything else equal;
- policy nesting: the same adapter under bitfit, the seed post's policy or full ⊇ under lora
  (frozen backbone); full ⊇ bitfit and seed;
- placement nesting: LoRA on the three convs (kxk, or the same shape) ⊇ LoRA on one conv at the
  same rank; `all` ⊇ any placement.
An inversion is a pair whose paired 95% interval of (container − contained) lies below zero.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pandas as pd

from bench.protocol import contains_probe
from bench.provenance import paths_named
from bench.reporting.fmt import num
from bench.reporting.stats import paired
from lorafit import backbones

RANK_NESTED = ("lora", "dora", "loha")
SENSITIVITY = (("lr-", "lr ÷√10"), ("lr+", "lr ×√10"), ("head_lr-", "head ÷√10"), ("head_lr+", "head ×√10"))
# Config fields that name the configuration, not what it computes.
_LABELS = ("name", "lr", "head_lr")


def is_design(s) -> bool:
    """A selection made by the designed-candidate protocol (not the first, pruned-TPE one)."""
    return isinstance(s, dict) and s.get("protocol") == "design"


def selection(row: pd.Series) -> dict:
    """The row's tuning selection under the designed-candidate protocol ({} otherwise)."""
    s = row.get("selection")
    return s if is_design(s) else {}


def fell_back(row: pd.Series) -> bool:
    return bool(selection(row).get("fallback"))


# ------------------------------------------------------------------------------ containment
def _differs(a: dict, b: dict) -> set[str]:
    return {k for k in set(a) | set(b) if k not in _LABELS and a.get(k) != b.get(k)}


def contains(a: pd.Series, b: pd.Series, ca: dict | None = None, cb: dict | None = None) -> str | None:
    """Why configuration a contains configuration b (None: it does not). ca, cb: their configs
    (json.loads of their keys), when the caller has them parsed already."""
    ca = json.loads(a["key"]) if ca is None else ca
    cb = json.loads(b["key"]) if cb is None else cb
    if a["key"] == b["key"] or "scratch" in (a["method"], b["method"]):
        return None
    backbone = (
        *("backbone", "widths", "pretrain_epochs", "pretrain_lr", "pretrain_batch_size", "pretrain_size"),
        "source",
    )
    if any(ca.get(k) != cb.get(k) for k in backbone):
        return None
    if b["method"] == "head" and contains_probe(a["method"]):
        return "adapter ⊇ probe"
    if a["method"] == "full" and b["method"] not in ("full", "head"):
        return "full ⊇ adapter"
    diff = _differs(ca, cb)
    rank_fields = {"rank"} | (
        {"alpha"} if ca.get("alpha") == ca.get("rank") and cb.get("alpha") == cb.get("rank") else set()
    )
    if diff and diff <= rank_fields and a["rank"] > b["rank"]:
        if a["method"] in RANK_NESTED or (a["method"] == "oft" and a["rank"] % b["rank"] == 0):
            return "rank nesting"
    if diff == {"policy"}:
        if (a["policy"] in ("bitfit", "conv2", "norm", "full") and b["policy"] == "lora") or (
            a["policy"] == "full" and b["policy"] in ("bitfit", "conv2", "norm")
        ):
            return "policy nesting"
    if diff and diff <= {"placement", "shape"} and a["method"] == "lora":
        network = ca.get("backbone") or backbones.DEFAULT
        if placement_contains(network, a["placement"], b["placement"]) and (
            a["shape"] in ("kxk", b["shape"]) or not backbones.is_conv_placement(network, b["placement"])
        ):
            return "placement nesting"
    return None


def placement_contains(network: str, outer: str, inner: str) -> bool:
    """Every layer `inner` adapts, `outer` adapts too (and more): LoRA there can fall back to it."""
    if network not in backbones.BACKBONES or outer == inner or "none" in (outer, inner):
        return False
    groups = backbones.placements(network)
    if outer not in groups or inner not in groups:
        return False
    model = backbones.shape_model(network)
    wide, narrow = set(backbones.resolve(model, outer)), set(backbones.resolve(model, inner))
    return narrow < wide


def containment(part: pd.DataFrame) -> pd.DataFrame:
    """Every (container, contained) pair of one setup with results, and its paired difference."""
    done = [r for _, r in part[part["acc_mean"].notna()].iterrows()]
    configs = [json.loads(r["key"]) for r in done]
    rows = []
    for a, ca in zip(done, configs):
        for b, cb in zip(done, configs):
            why = contains(a, b, ca, cb)
            if why is None:
                continue
            stats = paired(a["seed_acc"], b["seed_acc"])
            inverted = stats["n"] >= 2 and stats["hi"] < 0
            rows.append(
                {"container": a["label"], "contained": b["label"], "why": why, **stats, "inverted": inverted}
            )
    cols = ["container", "contained", "why", "n", "diff", "lo", "hi", "p", "inverted"]
    return pd.DataFrame(rows, columns=cols)


def containment_line(checks: pd.DataFrame) -> str:
    """The summary's sentence on containment."""
    if checks.empty:
        return "Containment: no configuration here contains another."
    bad = checks[checks["inverted"]]
    worst = "; ".join(
        f"{c['container']} {100 * c['diff']:+.2f} vs {c['contained']} ({c['why']})" for _, c in bad.iterrows()
    )
    return (
        f"Containment: {len(checks)} pair{'s' if len(checks) != 1 else ''} where one configuration "
        f"contains another; "
        f"{len(bad)} inversion{'s' if len(bad) != 1 else ''} beyond paired noise (the container's paired 95% "
        f"interval below the contained configuration's){': ' + worst if len(bad) else ''}."
    )


def containment_table(checks: pd.DataFrame) -> list[str]:
    if checks.empty:
        return []
    lines = [
        "| container | contained | why | Δ points (paired, 95% CI) | n | inversion |",
        "|---|---|---|--:|--:|:-:|",
    ]
    order = checks.sort_values(
        ["inverted", "diff", "container", "contained"], ascending=[False, True, True, True]
    )
    for _, c in order.iterrows():
        ci = "" if math.isnan(c["lo"]) else f" ({100 * c['lo']:+.2f} to {100 * c['hi']:+.2f})"
        lines.append(
            f"| {c['container']} | {c['contained']} | {c['why']} | {100 * c['diff']:+.2f}{ci} | {c['n']} | "
            f"{'**yes**' if c['inverted'] else ''} |"
        )
    return [
        "## Containment checks",
        "",
        "Every pair where one configuration can represent everything the other can (module docstring "
        "of `bench/reporting/evidence.py`): Δ = container − contained, paired by seed. An inversion (the "
        "interval entirely below zero) means the container's training or tuning did not find what it "
        "contains.",
        "",
        *lines,
        "",
    ]


# ---------------------------------------------------------------------------------- tuning
def _rate(x: float) -> str:
    return "0" if x == 0 else f"{x:.2g}"


def _points(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.2f}"


def tuning_rows(part: pd.DataFrame) -> list[dict]:
    """Per row tuned by the designed-candidate protocol: its selection, margin and sensitivity."""
    out = []
    for _, r in part.sort_values(["label"], kind="mergesort").iterrows():
        s = selection(r)
        if not s:
            continue
        best = s["best_val_acc"]
        sens = {
            k: (s["sensitivity"][k]["val_acc"] - best)
            if k in s.get("sensitivity", {}) and s["sensitivity"][k]["val_acc"] is not None
            else None
            for k, _ in SENSITIVITY
        }
        out.append({"label": r["label"], "method": r["method"], "selection": s, "sensitivity": sens})
    return out


def tuning_table(part: pd.DataFrame, paths: dict[str, Counter] | None = None) -> list[str]:
    """paths: tuning study -> its candidates' execution paths (compute.candidate_paths), to say
    where a row's candidates mixed bf16 and fp32."""
    rows = tuning_rows(part)
    paths = paths or {}
    if not rows:
        return []
    head = (
        "| configuration | selected lr / head | candidate | candidates | edge extensions | val acc % at "
        "selection | tuning margin, points | " + " | ".join(name for _, name in SENSITIVITY) + " | notes |"
    )
    lines = [head, "|---|---|---|--:|---|--:|--:|" + "--:|" * len(SENSITIVITY) + "---|"]
    for row in rows:
        s = row["selection"]
        rates = (
            _rate(s["head_lr"]) if row["method"] == "head" else f"{_rate(s['lr'])} / {_rate(s['head_lr'])}"
        )
        ext = ", ".join(f"{k} ×{v}" for k, v in s["extensions"].items()) or "none"
        notes = []
        if s["fallback"]:
            notes.append("**fell back to the probe** (lr 0: = the probe)")
        if s.get("moves"):
            notes.append(f"moved to a better neighbour ×{s['moves']}")
        if s["edge"]:
            notes.append(f"**on an edge after the cap**: {', '.join(s['edge'])}")
        better = [name for k, name in SENSITIVITY if (row["sensitivity"][k] or 0) > 0]
        if better:
            notes.append(f"a neighbour scored higher: {', '.join(better)}")
        mixed = sorted(paths.get(s.get("study"), {}).items())
        if len(mixed) > 1:  # candidates compared across roundings (reproduce measures what that moves)
            notes.append(f"candidates on {len(mixed)} paths: {paths_named(mixed)}")
        cells = [
            row["label"],
            rates,
            s["best_candidate"],
            str(s["trials"]),
            ext,
            f"{100 * s['best_val_acc']:.2f}",
            f"{100 * s['margin']:.2f}" if not math.isnan(s["margin"]) else "—",
            *[_points(row["sensitivity"][k]) for k, _ in SENSITIVITY],
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    spec = rows[0]["selection"]["spec"]
    refining = next((r["selection"]["spec"] for r in rows if r["selection"]["spec"].get("refine")), None)
    neighbour_rule = (
        " Neighbour rule: the selection's neighbours at ÷√10 and ×√10 along each rate are evaluated, and"
        " while one scores higher it becomes the selection (at most "
        f"{refining['max_moves']} moves), so no neighbour below scores above it."
        if refining
        else " Neighbours are evaluated for the record only, never selected."
    )
    return [
        "## Tuning evidence",
        "",
        f"Every row's rates were chosen among the same {spec['candidates']} designed candidates (scrambled "
        f"Sobol net, seed {spec['seed']}, lr {spec['lr'][0]:g}…{spec['lr'][1]:g}, head {spec['head_lr'][0]:g}"
        f"…{spec['head_lr'][1]:g}), each trained exactly as the seed-{spec['seed']} cell (the seeds' budget) "
        "and judged by validation accuracy, plus the probe's selected head rate with the rest at rest for"
        " every row that contains the probe, plus the edge rule's extensions (a half-decade further out "
        "while the selection lies in the outermost half-decade tried). Tuning margin: the expected best "
        "validation accuracy of all N designed candidates (extensions and fallback included) minus that of "
        "N/2 drawn at random (the expected-maximum "
        "tuning curve, unbiased estimator; near 0: more candidates would not have helped). Sensitivity: "
        "validation accuracy of the selection's neighbours at ÷√10 and ×√10 along each rate, in points "
        "from the selection (the other rate held); how forgiving a method is." + neighbour_rule,
        "",
        *lines,
        "",
    ]


def csv_fields(row: pd.Series) -> dict:
    """The tuning evidence's CSV columns (blank for rows not tuned by the designed protocol)."""
    s = selection(row)
    sens = s.get("sensitivity", {})
    return {
        "tuning_candidates": str(s["trials"]) if s else "",
        "tuning_selected_candidate": s.get("best_candidate", ""),
        "tuning_val_acc_fraction": num(s.get("best_val_acc")),
        "tuning_margin_fraction": num(s.get("margin")),
        "tuning_edge_extensions": ";".join(f"{k}:{v}" for k, v in s.get("extensions", {}).items()),
        "tuning_on_edge": ";".join(s.get("edge", [])),
        "tuning_neighbour_moves": str(s["moves"]) if s and "moves" in s else "",
        "tuning_fell_back_to_probe": (str(int(bool(s.get("fallback")))) if s else ""),
        **{
            f"sensitivity_{k.replace('+', '_up').replace('-', '_down')}_val_acc_fraction": num(
                (sens.get(k) or {}).get("val_acc")
            )
            for k, _ in SENSITIVITY
        },
    }
