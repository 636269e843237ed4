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

CONSUMED_BY = {  # where the fields of the sections of how a run executes end up
    "trainer": "Trainer(%s)",
    "dataloader": "train/val/inference DataLoader(%s)",
    "optimizer": "configure_optimizers",
    "checkpoint": "ModelCheckpoint / EarlyStopping / ReduceLROnPlateau; Ray CheckpointConfig",
    "logging": "Trainer(logger), ReconstructionImages",
}
CONSUMED_BY_FIELD = {
    "trainer.devices": "Trainer(devices); Ray workers per node",
    "trainer.num_nodes": "Trainer(num_nodes); Ray workers = devices x num_nodes",
    "trainer.strategy": "Trainer(strategy); Ray strategy",
    "trainer.deterministic": "Trainer(deterministic) + seed_everything",
    "trainer.enable_checkpointing": "ModelCheckpoint; Ray CheckpointConfig",
    "checkpoint.save_top_k": "ModelCheckpoint(save_top_k); Ray num_to_keep",
    "checkpoint.monitor": "ModelCheckpoint, EarlyStopping, ReduceLROnPlateau; Ray score attribute",
    "checkpoint.mode": "ModelCheckpoint, EarlyStopping, ReduceLROnPlateau; Ray order",
    "checkpoint.early_stop_patience": "EarlyStopping(patience)",
    "logging.logger": "Trainer(logger)",
    "logging.log_images_every_n_epochs": "progress_images.ReconstructionImages callback",
}


def _consumed_by(section: str, name: str) -> str:
    dotted = f"{section}.{name}"
    if dotted in CONSUMED_BY_FIELD:
        return CONSUMED_BY_FIELD[dotted]
    where = CONSUMED_BY.get(section, "")
    return where % name if "%s" in where else where



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
        consumed = section in CONSUMED_BY
        lines.append("| field | default | flags | meaning |" + (" consumed by |" if consumed else ""))
        lines.append("|---|---|---|---|" + ("---|" if consumed else ""))
        for f in fields(cls):
            row = f"| `{f.name}` | {_default(f)} | {_flags(f'{section}.{f.name}')} | {f.metadata.get('doc', '')} |"
            if consumed:
                row += f" {_consumed_by(section, f.name)} |"
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
