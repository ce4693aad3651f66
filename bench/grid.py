"""Grid files (studies/grid.toml) -> the list of RunConfig cells, one per configuration x seed.

    [data]       source, target: the datasets (default: the profile's; `--target` overrides)
    [tune]       the tuning stage (bench/protocol.py, bench/tuning.py): candidates, seed,
                 lr = [low, high], head_lr = [low, high], max_extensions, sensitivity, and
                 profiles = [...] where it applies (default: every profile); [tune.<profile>]
                 overrides keys for one profile
    [lr]         <method> = <learning rate>      fixed-rate mode (profiles without tuning, or
    [lr.<profile>]                               --no-tune): one rate per method, per profile
    [[cell]]     any RunConfig field but seed, profile and protocol (the same fields a study's
                 [fixed] takes): name (may template values: "lora-{placement}"), method,
                 placement, shape, rank, alpha, policy, lr, epochs, train_size, target,
                 backbone, ... A list value expands into one configuration per value (cartesian
                 product). profiles = [...] (not a RunConfig field): the profiles the cell runs in
                 (default: every profile).
    [backbones.<name>]   a user's own network (bring your own model), then `backbone = "<name>"`
                 in cells: factory = "module:function" (takes the number of classes, returns an
                 nn.Module; the grid file's folder is importable), head = "fc" (an nn.Linear),
                 weights = "file.pt" (optional: already trained on the source task; relative to
                 the grid file), stages = [...] (optional: the children its forward applies in
                 order, for the frozen-prefix cache), and [backbones.<name>.groups]: placement
                 name = [module-path patterns] (regular expressions matched against whole paths)

An unset alpha is the adapter method's default (lorafit.config.cell_config).
"""

from __future__ import annotations

import itertools
import sys
import tomllib
from pathlib import Path

from bench.profiles import PROFILES, config_defaults
from bench.profiles import profile as profile_table
from bench.protocol import TuneSpec
from lorafit import adapters, backbones
from lorafit.config import CELL_FIELDS, RunConfig, cell_config
from lorafit.errors import LorafitError
from lorafit.names import modern, modernize

DATA_KEYS = ("source", "target")
PLACEHOLDER_LR = 1e-3  # a tuned cell's rate before the tuning stage sets it


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
    lrs = {modern("method", k): v for k, v in doc.get("lr", {}).items() if not isinstance(v, dict)}
    per_profile = {
        k: {modern("method", m): r for m, r in v.items()}
        for k, v in doc.get("lr", {}).items()
        if isinstance(v, dict)
    }
    bad = sorted(set(lrs) - set(methods)) + sorted(set(per_profile) - set(PROFILES))
    for table in per_profile.values():
        bad += sorted(set(table) - set(methods))
    if bad:
        raise LorafitError(
            f"{path}: [lr] has unknown method(s) or profile(s) {', '.join(bad)}; "
            f"methods are {', '.join(methods)}, profiles {', '.join(PROFILES)}"
        )
    return {**lrs, **per_profile.get(profile, {})}


BYO_KEYS = ("factory", "head", "weights", "stages", "groups")


def register_backbones(path: Path, doc: dict) -> None:
    """Register the grid file's [backbones.<name>] entries (a user's networks) in this process."""
    table = doc.get("backbones", {})
    for name, spec in table.items():
        if name in backbones.BACKBONES and not backbones.BACKBONES[name].factory:
            raise LorafitError(f"{path}: [backbones.{name}] would replace the built-in backbone {name}")
        bad = sorted(set(spec) - set(BYO_KEYS)) if isinstance(spec, dict) else ["(not a table)"]
        if bad or "factory" not in spec or not isinstance(spec.get("groups"), dict):
            raise LorafitError(
                f"{path}: [backbones.{name}] needs factory and [backbones.{name}.groups]"
                + (f"; unknown key(s) {', '.join(bad)}" if bad else "")
                + f"; allowed: {', '.join(BYO_KEYS)}"
            )
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # a nets.py beside the grid file is importable
        weights = spec.get("weights", "")
        if weights and not Path(weights).is_absolute():
            weights = str(path.resolve().parent / weights)
        try:
            backbones.custom(
                name,
                factory=spec["factory"],
                groups=spec["groups"],
                head=spec.get("head", "fc"),
                weights=weights,
                stages=tuple(spec.get("stages", ())),
            )
        except LorafitError as e:
            raise LorafitError(f"{path}: [backbones.{name}]: {e}") from None


def load_tuning(path: str | Path, profile: str) -> TuneSpec | None:
    """The grid's tuning budget for `profile`, or None when the profile uses fixed rates."""
    path = Path(path)
    table = dict(read_toml(path).get("tune", {}))
    if not table:
        return None
    per_profile = {k: table.pop(k) for k in list(table) if isinstance(table[k], dict)}
    _profile_list(path, "[tune]", sorted(per_profile) or list(PROFILES))
    if profile not in _profile_list(path, "[tune]", table.pop("profiles", list(PROFILES))):
        return None
    try:
        return TuneSpec.from_table({**table, **per_profile.get(profile, {})})
    except (LorafitError, TypeError) as e:
        raise LorafitError(f"{path}: {e}") from None


def _profile_list(path: Path, where: str, value) -> list[str]:
    """A `profiles = [...]` value ([tune] or a cell), checked: a non-empty list of known profiles."""
    if not isinstance(value, list) or not value or set(value) - set(PROFILES):
        raise LorafitError(
            f"{path}: {where} names unknown profile(s) in {value!r}: profiles must be a list of "
            f"{', '.join(PROFILES)}"
        )
    return value


def _runs_in(path: Path, cell: dict, profile: str) -> bool:
    """Whether a cell runs in `profile`: its `profiles` list, when it has one, names it."""
    only = cell.get("profiles")
    return only is None or profile in _profile_list(path, f"cell {cell.get('name')!r}", only)


def load_grid(
    path: str | Path,
    profile: str,
    seeds: int | None = None,
    overrides: dict | None = None,
    tuned: bool = False,
) -> list[RunConfig]:
    """All cells of the grid file for `profile`, seeds 0..seeds-1 each (default: the profile's
    number of seeds); duplicates removed. `overrides` (e.g. --target) replace the profile's and
    the [data] section's defaults; a cell's own fields win over all of them. With `tuned`, cells
    need no [lr] entry: their rates are placeholders the tuning stage replaces."""
    path = Path(path)
    doc = read_toml(path)
    unknown = sorted(set(doc) - {"data", "tune", "lr", "cell", "backbones"})
    if unknown:
        raise LorafitError(
            f"{path}: unknown section(s) {', '.join(unknown)}; expected [data], [tune], [lr], "
            f"[backbones.<name>] and [[cell]]"
        )
    register_backbones(path, doc)
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
        if not _runs_in(path, cell, profile):
            continue
        cell = {k: v for k, v in cell.items() if k != "profiles"}
        bad = sorted(set(cell) - set(CELL_FIELDS))
        if bad:
            raise LorafitError(
                f"{path}: cell {cell.get('name')!r} has unknown key(s) {', '.join(bad)}; "
                f"allowed: {', '.join(CELL_FIELDS)}"
            )
        if "name" not in cell or "method" not in cell:
            raise LorafitError(f"{path}: every [[cell]] needs a name and a method")
        for entry in _expand(modernize(cell)):
            if "lr" not in entry and tuned:
                entry["lr"] = lrs.get(entry["method"], PLACEHOLDER_LR)
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
