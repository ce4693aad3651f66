"""Grid files (studies/grid.toml) -> the list of RunConfig cells, one per configuration x seed.

    [data]       source, target: the datasets (default: the profile's; `--target` overrides)
    [lr]         <method> = <learning rate>      fixed-rate mode: one rate per method
    [lr.<profile>]                               overrides for one profile
    [[cell]]     any RunConfig field but seed, profile and protocol (the same fields a study's
                 [fixed] takes): name (may template values: "lora-{placement}"), method,
                 placement, shape, rank, alpha, policy, lr, epochs, train_size, target, ...
                 A list value expands into one configuration per value (cartesian product).

An unset alpha is the adapter method's default (lorafit.config.cell_config).
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

from bench.profiles import PROFILES, config_defaults
from bench.profiles import profile as profile_table
from lorafit import adapters
from lorafit.config import CELL_FIELDS, RunConfig, cell_config
from lorafit.errors import LorafitError

DATA_KEYS = ("source", "target")


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


def _rates(path: Path, doc: dict, profile: str) -> dict[str, float]:
    """[lr] with the profile's [lr.<profile>] applied."""
    methods = adapters.methods()
    lrs = {k: v for k, v in doc.get("lr", {}).items() if not isinstance(v, dict)}
    per_profile = {k: v for k, v in doc.get("lr", {}).items() if isinstance(v, dict)}
    bad = sorted(set(lrs) - set(methods)) + sorted(set(per_profile) - set(PROFILES))
    for table in per_profile.values():
        bad += sorted(set(table) - set(methods))
    if bad:
        raise LorafitError(
            f"{path}: [lr] has unknown method(s) or profile(s) {', '.join(bad)}; "
            f"methods are {', '.join(methods)}, profiles {', '.join(PROFILES)}"
        )
    return {**lrs, **per_profile.get(profile, {})}


def load_grid(
    path: str | Path, profile: str, seeds: int | None = None, overrides: dict | None = None
) -> list[RunConfig]:
    """All cells of the grid file for `profile`, seeds 0..seeds-1 each (default: the profile's
    number of seeds); duplicates removed. `overrides` (e.g. --target) replace the profile's and
    the [data] section's defaults; a cell's own fields win over all of them."""
    path = Path(path)
    doc = read_toml(path)
    unknown = sorted(set(doc) - {"data", "lr", "cell"})
    if unknown:
        raise LorafitError(
            f"{path}: unknown section(s) {', '.join(unknown)}; expected [data], [lr] and [[cell]]"
        )
    bad = sorted(set(doc.get("data", {})) - set(DATA_KEYS))
    if bad:
        raise LorafitError(
            f"{path}: [data] has unknown key(s) {', '.join(bad)}; allowed: {', '.join(DATA_KEYS)}"
        )
    lrs = _rates(path, doc, profile)
    n_seeds = seeds if seeds is not None else profile_table(profile)["seeds"]
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise LorafitError(f"seeds must be an integer >= 1, got {n_seeds!r}")
    cells = doc.get("cell", [])
    if not isinstance(cells, list) or not cells:
        raise LorafitError(f"{path}: no [[cell]] entries")
    defaults = {**config_defaults(profile), **doc.get("data", {}), **(overrides or {})}
    configs: dict[str, RunConfig] = {}
    for cell in cells:
        bad = sorted(set(cell) - set(CELL_FIELDS))
        if bad:
            raise LorafitError(
                f"{path}: cell {cell.get('name')!r} has unknown key(s) {', '.join(bad)}; "
                f"allowed: {', '.join(CELL_FIELDS)}"
            )
        if "name" not in cell or "method" not in cell:
            raise LorafitError(f"{path}: every [[cell]] needs a name and a method")
        for entry in _expand(cell):
            if "lr" not in entry:
                if entry["method"] not in lrs:
                    raise LorafitError(
                        f"{path}: no learning rate for method {entry['method']!r}: add it to [lr]"
                    )
                entry["lr"] = lrs[entry["method"]]
            for seed in range(n_seeds):
                try:
                    cfg = cell_config({**entry, "seed": seed}, defaults)
                except LorafitError as e:
                    raise LorafitError(f"{path}: cell {cell['name']!r}: {e}") from None
                configs.setdefault(cfg.digest(), cfg)
    return list(configs.values())
