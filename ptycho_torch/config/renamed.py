"""Old config names, read under their new ones: YAML files, saved run directories (config.yaml, model.pt,
sweeps' stored base config), dotted overrides, sweep search spaces and flags written before the
`execution` section was split by concern (trainer / optimizer / dataloader / checkpoint / logging).

Each old name is read once per process with one notice line naming where it was found and its new
name; the value is unchanged, except training.max_minutes, which becomes trainer.max_time {minutes: M}.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("ptycho_torch.config")

# old dotted field -> new dotted field
RENAMED_FIELDS: dict[str, str] = {
    "training.nepochs": "trainer.max_epochs",
    "training.max_minutes": "trainer.max_time",
    "execution.accelerator": "trainer.accelerator",
    "execution.devices": "trainer.devices",
    "execution.num_nodes": "trainer.num_nodes",
    "execution.strategy": "trainer.strategy",
    "execution.deterministic": "trainer.deterministic",
    "execution.precision": "trainer.precision",
    "execution.gradient_clip_val": "trainer.gradient_clip_val",
    "execution.gradient_clip_algorithm": "trainer.gradient_clip_algorithm",
    "execution.accum_steps": "trainer.accumulate_grad_batches",
    "execution.log_every_n_steps": "trainer.log_every_n_steps",
    "execution.enable_checkpointing": "trainer.enable_checkpointing",
    "execution.enable_progress_bar": "trainer.enable_progress_bar",
    "execution.num_workers": "dataloader.num_workers",
    "execution.pin_memory": "dataloader.pin_memory",
    "execution.persistent_workers": "dataloader.persistent_workers",
    "execution.prefetch_factor": "dataloader.prefetch_factor",
    "execution.learning_rate": "optimizer.learning_rate",
    "execution.scheduler": "optimizer.scheduler",
    "execution.scheduler_gamma": "optimizer.scheduler_gamma",
    "execution.scheduler_milestones": "optimizer.scheduler_milestones",
    "execution.warmup_epochs": "optimizer.warmup_epochs",
    "execution.min_lr_ratio": "optimizer.min_lr_ratio",
    "execution.plateau_factor": "optimizer.plateau_factor",
    "execution.plateau_patience": "optimizer.plateau_patience",
    "execution.checkpoint_save_top_k": "checkpoint.save_top_k",
    "execution.checkpoint_monitor_metric": "checkpoint.monitor",
    "execution.checkpoint_mode": "checkpoint.mode",
    "execution.early_stop_patience": "checkpoint.early_stop_patience",
    "execution.logger_backend": "logging.logger",
    "execution.log_images_every_n_epochs": "logging.log_images_every_n_epochs",
    "execution.inference_batch_size": "inference.batch_size",
    "execution.seed": "training.seed",
}
OLD_SECTIONS = ("execution",)  # sections that no longer exist (every field moved)

# old command-line flag -> its new spelling (the old one still works, with a notice)
RENAMED_FLAGS: dict[str, str] = {"--num-workers": "--dataloader-workers"}

_noticed: set[str] = set()


def _notice(where: str, renamed: list[tuple[str, str]]) -> None:
    pairs = ", ".join(f"{old} -> {new}" for old, new in renamed[:4])
    more = f" (+{len(renamed) - 4} more)" if len(renamed) > 4 else ""
    line = f"{where}: old config names read as the new ones: {pairs}{more}; see docs/configuration.md"
    if line not in _noticed:
        _noticed.add(line)
        log.warning("%s", line)


def renamed_flag(old: str) -> str:
    """The new spelling of an old flag (or Python keyword: num_workers -> dataloader_workers), noticed once."""
    flag = old if old.startswith("--") else "--" + old.replace("_", "-")
    new = RENAMED_FLAGS[flag]
    shown = new if old.startswith("--") else new.lstrip("-").replace("-", "_")
    line = (f"{old} is now {shown} (DataLoader processes per training process; Ray's workers are "
            "--devices x --num-nodes)") if flag == "--num-workers" else f"{old} is now {shown}"
    if line not in _noticed:
        _noticed.add(line)
        log.warning("%s", line)
    return new


def new_value(old: str, value: Any) -> Any:
    """The value an old field's value takes under its new name (max_minutes M -> max_time {minutes: M})."""
    if old == "training.max_minutes" and value is not None and not isinstance(value, bool):
        return {"minutes": value}
    return value


def renamed_field(dotted: str, where: str = "override") -> str:
    """The current name of a dotted field (itself when it was never renamed); an old one is noticed once."""
    new = RENAMED_FIELDS.get(dotted)
    if new is None:
        return dotted
    _notice(where, [(dotted, new)])
    return new


def renamed_dotted(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Dotted field -> value (overrides, a sweep's fixed values) with old names replaced, in order."""
    renamed = [(k, RENAMED_FIELDS[k]) for k in values if k in RENAMED_FIELDS]
    if not renamed:
        return dict(values)
    _notice(where, renamed)
    return {RENAMED_FIELDS.get(k, k): new_value(k, v) for k, v in values.items()}


def renamed_sections(data: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """A mapping of sections (a YAML file, a saved config) with old fields moved to their new sections.
    A field given under both names keeps the new name's value. Anything not recognised is left for the
    sections' own checks (which name the unknown key)."""
    moves: list[tuple[str, str, Any]] = []
    for old, new in RENAMED_FIELDS.items():
        section, name = old.split(".")
        part = data.get(section)
        if isinstance(part, dict) and name in part:
            moves.append((old, new, part[name]))
    if not moves:
        if any(isinstance(data.get(section), dict) for section in OLD_SECTIONS):
            data = dict(data)
            _check_old_sections(data)
        return data
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for old, new, value in moves:
        section, name = old.split(".")
        del out[section][name]
        new_section, new_name = new.split(".")
        target = out.get(new_section)
        if target is None:
            target = out[new_section] = {}
        if isinstance(target, dict):
            target.setdefault(new_name, new_value(old, value))
    _check_old_sections(out)
    _notice(where, [(old, new) for old, new, _ in moves])
    return out


def _check_old_sections(data: dict[str, Any]) -> None:
    """Drop an old section left empty by the moves; keys left in it were never fields: one ConfigError
    naming them, the nearest old field and where it lives now."""
    import difflib

    from ptycho_torch.errors import ConfigError

    for section in OLD_SECTIONS:
        part = data.get(section)
        if not isinstance(part, dict):
            continue
        if not part:
            del data[section]
            continue
        olds = [old.split(".")[1] for old in RENAMED_FIELDS if old.startswith(section + ".")]
        hints = []
        for key in sorted(part):
            near = difflib.get_close_matches(str(key), olds, n=1)
            if near:
                hints.append(f"{key}: did you mean {near[0]} (now {RENAMED_FIELDS[f'{section}.{near[0]}']})?")
        raise ConfigError(f"{section}: unknown key(s) {', '.join(map(str, sorted(part)))}; the {section} section "
                          "was split into trainer, optimizer, dataloader, checkpoint and logging "
                          "(docs/configuration.md)" + ("; " + " ".join(hints) if hints else ""))
