"""A hyper-parameter search space over run-config fields, as plain data, and its checks.

A space maps dotted RunConfig field names to one entry each: `{grid: [...]}`, `{choice: [...]}`,
`{uniform: [low, high]}`, `{loguniform: [low, high]}` or `{randint: [low, high)}`. `normalise_space`
checks the names and the entries (one message naming `sweep.space.<field>`); `space_problems` applies
every discrete value, the range ends and the combinations of discrete values to a run config, so a
value of the wrong type or range is found before any trial starts; `metric_problems` says when the
ranking metric would never be logged. ptycho_dist.sweeps.sweep_config.SweepConfig (the sweep file) uses these;
nothing here needs Ray.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from typing import Any, Callable, Mapping

from ptycho_torch.config import SECTIONS, ConfigError, RunConfig
from ptycho_torch.config.renamed import renamed_field

# Metrics the LightningModule logs once per epoch (the *_mae / *_tv terms only with a non-zero weight,
# val_* only with validation), any of which a sweep can rank trials by.
SWEEP_METRICS: tuple[str, ...] = (
    *(f"{split}_{term}" for split in ("val", "train") for term in ("loss", "nll", "mae", "tv")), "lr")
# Search-space entry kinds: `field: {kind: values}`.
SPACE_KINDS: tuple[str, ...] = ("grid", "choice", "uniform", "loguniform", "randint")
# Fields a sweep may not search, and what to do instead.
NOT_SEARCHABLE: dict[str, str] = {
    "data.path": "the scan comes from --data (or data.path of the run config)",
    "trainer.devices": "the workers of each trial are set by workers_per_trial",
    "trainer.num_nodes": "the workers of each trial are set by workers_per_trial",
}
MAX_COMBINATIONS_CHECKED = 512

Space = dict[str, dict[str, list[Any]]]  # dotted field -> {kind: values}


def _fail(key: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"sweep.{key}: {message}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def normalise_entry(dotted: str, entry: Any) -> dict[str, list[Any]]:
    """One space entry -> {kind: [values]}; raises ConfigError naming the field."""
    key = f"space.{dotted}"
    if not isinstance(entry, dict) or len(entry) != 1:
        _fail(key, f"got {entry!r}; expected a mapping with exactly one of {', '.join(SPACE_KINDS)}, "
                   "e.g. {grid: [1, 2]} or {loguniform: [1.0e-4, 1.0e-2]} (fixed values belong in the run config)")
    ((kind, values),) = entry.items()
    if kind not in SPACE_KINDS:
        _fail(key, f"unknown kind {kind!r}; use one of {', '.join(SPACE_KINDS)}")
    if kind in ("grid", "choice"):
        if not isinstance(values, list) or not values:
            _fail(key, f"{kind} needs a non-empty list of values, got {values!r}")
        return {kind: list(values)}
    if not isinstance(values, list) or len(values) != 2 or not all(_number(v) for v in values):
        _fail(key, f"{kind} needs [low, high] (two numbers), got {values!r}")
    low, high = values
    if kind == "randint":
        if not all(isinstance(v, int) or float(v).is_integer() for v in values):
            _fail(key, f"randint needs integer bounds [low, high), got {values!r}")
        low, high = int(low), int(high)
    if low >= high:
        _fail(key, f"{kind} [{low}, {high}]: low must be < high"
                   + (" (high is exclusive: randint [1, 4] draws 1, 2 or 3)" if kind == "randint" else ""))
    if kind == "loguniform" and low <= 0:
        _fail(key, f"loguniform [{low}, {high}]: low must be > 0 (sampled on a log scale)")
    if kind != "randint":
        low, high = float(low), float(high)
    return {kind: [low, high]}


def _section_fields(section: str) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(SECTIONS[section]))


def normalise_space(space: Any) -> Space:
    """Check a space's field names and entries and return it normalised (module docstring)."""
    if not isinstance(space, dict) or not space:
        _fail("space", f"got {space!r}; expected a non-empty mapping of dotted config fields to search "
                       "entries, e.g. optimizer.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}")
    out: Space = {}
    for dotted, entry in space.items():
        dotted = renamed_field(str(dotted), "sweep.space")
        section, _, name = dotted.partition(".")
        if section not in SECTIONS or not name:
            _fail(f"space.{dotted}", f"expected 'section.field' with section one of {', '.join(SECTIONS)}")
        if name not in _section_fields(section):
            _fail(f"space.{dotted}", f"unknown field {name!r} of section {section}; "
                                     f"{section} has {', '.join(_section_fields(section))}")
        if dotted in NOT_SEARCHABLE:
            _fail(f"space.{dotted}", f"cannot be searched: {NOT_SEARCHABLE[dotted]}")
        out[str(dotted)] = normalise_entry(str(dotted), entry)
    return out


def _is_int_field(dotted: str) -> bool:
    section, name = dotted.split(".")
    return typing.get_type_hints(SECTIONS[section]).get(name) is int


def space_problems(space: Space, make_config: Callable[[dict[str, Any]], RunConfig]) -> list[str]:
    """Every problem found by building trial configs (`make_config(params)`, which raises ConfigError)
    from each grid/choice value, the ends of each range and, when those pass, the combinations of
    discrete values (cross-field checks, e.g. persistent_workers needs num_workers > 0)."""
    problems: list[str] = []

    def attempt(params: dict[str, Any], what: str) -> bool:
        try:
            make_config(params)
        except ConfigError as e:
            problems.append(f"sweep.{what}: {e}")
            return False
        return True

    ok = True
    discrete: dict[str, list[Any]] = {}
    lows: dict[str, Any] = {}
    for dotted, entry in space.items():
        ((kind, values),) = entry.items()
        if kind in ("grid", "choice"):
            ok &= all([attempt({dotted: v}, f"space.{dotted}: {kind} value {v!r}") for v in values])
            discrete[dotted] = values
            continue
        low, high = values
        probes = [low, high - 1] if kind == "randint" else [low, math.nextafter(low, high), high]
        hint = " (an integer field: use randint or grid)" if kind != "randint" and _is_int_field(dotted) else ""
        ok &= all([attempt({dotted: v}, f"space.{dotted}: {kind} [{low}, {high}]{hint} sample {v!r}") for v in probes])
        lows[dotted] = low
    if ok and discrete:
        for combo in itertools.islice(itertools.product(*discrete.values()), MAX_COMBINATIONS_CHECKED):
            params = {**lows, **dict(zip(discrete, combo))}
            if not attempt(params, f"space: the combination {params}"):
                break
    return problems


def _values_of(dotted: str, space: Mapping[str, dict[str, list[Any]]], base: RunConfig) -> list[Any]:
    """The base value of a field, or the swept values / range ends when the space searches it."""
    if dotted in space:
        ((_, values),) = space[dotted].items()
        return list(values)
    section, name = dotted.split(".")
    return [getattr(getattr(base, section), name)]


def metric_problems(metric: str, space: Space, base: RunConfig) -> list[str]:
    """Why `metric` would not be logged in every trial (validation off, a loss term's weight 0)."""
    split, _, term = metric.partition("_")
    problems = []
    if split == "val" and not all(v and v > 0 for v in _values_of("data.val_fraction", space, base)):
        problems.append(f"sweep.metric: {metric} needs validation, but data.val_fraction is 0 (in the run "
                        f"config or the space); set data.val_fraction > 0 or use train_{term}")
    weights = {"mae": "training.mae_weight", "tv": "training.tv_weight"}
    if term in weights and not all(v and v > 0 for v in _values_of(weights[term], space, base)):
        problems.append(f"sweep.metric: {metric} is only logged when {weights[term]} > 0 (in every trial); "
                        "set it in the run config or rank by val_loss")
    return problems
