"""Grid files (studies/grid.toml) -> the list of RunConfig cells, one per configuration x seed.

    [lr]         <method> = <learning rate>      one per method family, with its provenance
    [lr.<profile>]                               overrides for one profile
    [[cell]]     name (may template values: "lora-{placement}"), method, placement, shape, rank, alpha, policy, (lr, weight_decay, epochs)
                 a list value expands into one configuration per value (cartesian product)

Unset alpha means alpha = rank for weight-space LoRA (scaling 1) and 1.0 otherwise.
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

from lorafit.config import METHODS, RunConfig
from lorafit.errors import LorafitError

from bench.profiles import PROFILES, config_defaults, profile as profile_table

CELL_KEYS = {"name", "method", "placement", "shape", "rank", "alpha", "policy", "lr",
             "weight_decay", "epochs", "patience"}


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LorafitError(f"{path}: file not found")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LorafitError(f"{path}: malformed TOML: {e}") from None


def _expand(cell: dict) -> list[dict]:
    keys = sorted(cell)
    values = [cell[k] if isinstance(cell[k], list) else [cell[k]] for k in keys]
    if any(len(v) == 0 for v in values):
        raise LorafitError(f"cell {cell.get('name')!r}: empty list value")
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def load_grid(path: str | Path, profile: str, seeds: int | None = None,
              overrides: dict | None = None) -> list[RunConfig]:
    """All cells of the grid file for `profile`, seeds 0..seeds-1 each (default: the profile's
    number of seeds); duplicates removed."""
    doc = read_toml(path)
    unknown = sorted(set(doc) - {"lr", "cell"})
    if unknown:
        raise LorafitError(f"{path}: unknown section(s) {', '.join(unknown)}; expected [lr] and [[cell]]")
    lrs = {k: v for k, v in doc.get("lr", {}).items() if not isinstance(v, dict)}
    per_profile = {k: v for k, v in doc.get("lr", {}).items() if isinstance(v, dict)}
    bad = sorted(set(lrs) - set(METHODS)) + sorted(set(per_profile) - set(PROFILES))
    for table in per_profile.values():
        bad += sorted(set(table) - set(METHODS))
    if bad:
        raise LorafitError(f"{path}: [lr] has unknown method(s) or profile(s) {', '.join(bad)}; "
                           f"methods are {', '.join(METHODS)}, profiles {', '.join(PROFILES)}")
    lrs.update(per_profile.get(profile, {}))  # [lr.<profile>] overrides the family rates
    n_seeds = seeds if seeds is not None else profile_table(profile)["seeds"]
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise LorafitError(f"seeds must be an integer >= 1, got {n_seeds!r}")
    cells = doc.get("cell", [])
    if not isinstance(cells, list) or not cells:
        raise LorafitError(f"{path}: no [[cell]] entries")
    base = {**config_defaults(profile), **(overrides or {})}
    configs: dict[str, RunConfig] = {}
    for cell in cells:
        bad = sorted(set(cell) - CELL_KEYS)
        if bad:
            raise LorafitError(f"{path}: cell {cell.get('name')!r} has unknown key(s) {', '.join(bad)}; "
                               f"allowed: {', '.join(sorted(CELL_KEYS))}")
        if "name" not in cell or "method" not in cell:
            raise LorafitError(f"{path}: every [[cell]] needs a name and a method")
        for entry in _expand(cell):
            try:  # names may template expanded values, e.g. "lora-{placement}"
                entry["name"] = str(entry["name"]).format(**entry)
            except (KeyError, IndexError, ValueError) as e:
                raise LorafitError(f"{path}: bad cell name template {cell['name']!r}: {e}") from None
            method = entry["method"]
            if "lr" not in entry:
                if method not in lrs:
                    raise LorafitError(f"{path}: no learning rate for method {method!r}: add it to [lr]")
                entry["lr"] = lrs[method]
            if "alpha" not in entry:
                weight_space = method == "lora" and entry.get("placement", "none") not in ("none", "seed")
                entry["alpha"] = float(entry.get("rank", 1)) if weight_space else 1.0
            for seed in range(n_seeds):
                try:
                    cfg = RunConfig(**{**base, **entry, "seed": seed})
                except TypeError as e:
                    raise LorafitError(f"{path}: cell {entry['name']!r}: {e}") from None
                configs.setdefault(cfg.digest(), cfg)
    return list(configs.values())
