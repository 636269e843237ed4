"""Generate the configuration reference (docs/configuration.md) from the config dataclasses.

`python -m ptycho_torch.config.reference --write docs/configuration.md` rewrites the generated part of the
page (between the BEGIN/END markers); a test fails when the page and the dataclasses disagree.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path

from ptycho_torch.config import SECTIONS, SimulationConfig
from ptycho_torch.config.flag_names import BOOL_FLAG_FIELDS, FLAG_FIELDS

BEGIN = "<!-- BEGIN GENERATED: python -m ptycho_torch.config.reference --write docs/configuration.md -->"
END = "<!-- END GENERATED -->"

CONSUMED_BY = {
    "accelerator": "Trainer(accelerator)", "devices": "Trainer(devices); Ray workers per node",
    "num_nodes": "Trainer(num_nodes); Ray workers = devices x num_nodes", "strategy": "Trainer(strategy); Ray strategy",
    "deterministic": "Trainer(deterministic) + seed_everything", "precision": "Trainer(precision)",
    "gradient_clip_val": "Trainer(gradient_clip_val)", "gradient_clip_algorithm": "Trainer(gradient_clip_algorithm)",
    "accum_steps": "Trainer(accumulate_grad_batches)", "num_workers": "train/val/inference DataLoader",
    "pin_memory": "train/val/inference DataLoader", "persistent_workers": "train/val/inference DataLoader",
    "prefetch_factor": "train/val/inference DataLoader", "learning_rate": "configure_optimizers (Adam)",
    "scheduler": "configure_optimizers", "scheduler_gamma": "Exponential, MultiStage",
    "scheduler_milestones": "MultiStage", "warmup_epochs": "WarmupCosine", "min_lr_ratio": "WarmupCosine",
    "plateau_factor": "ReduceLROnPlateau", "plateau_patience": "ReduceLROnPlateau",
    "enable_checkpointing": "ModelCheckpoint; Ray CheckpointConfig", "checkpoint_save_top_k": "ModelCheckpoint(save_top_k); Ray num_to_keep",
    "checkpoint_monitor_metric": "ModelCheckpoint, EarlyStopping, ReduceLROnPlateau; Ray score attribute",
    "checkpoint_mode": "ModelCheckpoint, EarlyStopping, ReduceLROnPlateau; Ray order",
    "early_stop_patience": "EarlyStopping(patience)", "enable_progress_bar": "Trainer(enable_progress_bar)",
    "logger_backend": "Trainer(logger)", "log_every_n_steps": "Trainer(log_every_n_steps)",
    "log_images_every_n_epochs": "progress_images.ReconstructionImages callback",
    "inference_batch_size": "reconstruct (local and Ray Data)", "seed": "seed_everything, DistributedSampler, data split",
}


def _default(f) -> str:
    value = f.default if f.default is not MISSING else f.default_factory()
    return f"`{value!r}`"


def _flags(dotted: str) -> str:
    short = [flag for flag, target in {**FLAG_FIELDS, **BOOL_FLAG_FIELDS}.items() if target == dotted]
    if dotted in BOOL_FLAG_FIELDS.values():
        short = [f"{s}/--no-{s[2:]}" for s in short]
    return ", ".join(f"`{s}`" for s in short + ([f"--{dotted}"] if dotted != "data.path" else ["--data"]))


def generated_reference() -> str:
    lines = []
    for section, cls in SECTIONS.items():
        lines += [f"### `{section}` — {cls.__name__}", "", " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split()), ""]
        consumed = section == "execution"
        lines.append("| field | default | flags | meaning |" + (" consumed by |" if consumed else ""))
        lines.append("|---|---|---|---|" + ("---|" if consumed else ""))
        for f in fields(cls):
            row = f"| `{f.name}` | {_default(f)} | {_flags(f'{section}.{f.name}')} | {f.metadata.get('doc', '')} |"
            if consumed:
                row += f" {CONSUMED_BY.get(f.name, '')} |"
            lines.append(row)
        lines.append("")
    lines += ["### `ptycho-torch simulate` — SimulationConfig", "",
              "| field | default | flag | meaning |", "|---|---|---|---|"]
    for f in fields(SimulationConfig):
        lines.append(f"| `{f.name}` | {_default(f)} | `--{f.name.replace('_', '-')}` | {f.metadata.get('doc', '')} |")
    return "\n".join(lines) + "\n"


def rewrite(page: Path) -> None:
    text = page.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    from ptycho_torch.safe_output import atomic_write_text

    atomic_write_text(page, f"{head}{BEGIN}\n{generated_reference()}{END}{tail}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="page to update in place (default: print)")
    args = parser.parse_args()
    if args.write:
        rewrite(args.write)
    else:
        print(generated_reference())
