"""Every field of the sections of how a run executes (trainer, optimizer, dataloader, checkpoint, logging)
has an effect on what training really builds or does.

`EFFECTS` maps each field to a check that trains (or builds) with a non-default value and inspects
the real Lightning Trainer, DataLoader, optimiser, scheduler or files. The parametrised test over
those sections' fields fails for a field without a check, so a new knob cannot be added without
proving its effect. Field names are unique across the five sections.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Callable

import lightning as L
import pytest
import torch
from conftest import tiny_config
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.strategies import DDPStrategy

from ptycho_torch.config import SECTIONS, ConfigError, DataLoaderConfig
from ptycho_torch.data.contract import read_scan
from ptycho_torch.model.module import warmup_cosine
from ptycho_torch.reconstruction.reconstruct import inference_groups, inference_loader
from ptycho_torch.training.train import TrainResult, build_trainer, resolve_accelerator, train

_CACHE: dict[tuple, TrainResult] = {}


@pytest.fixture(scope="module")
def scan(tiny_scan) -> Path:
    return tiny_scan


def fit(scan: Path, tmp: Path, **overrides) -> TrainResult:
    """Train the tiny config with dotted overrides (cached per distinct overrides)."""
    key = tuple(sorted((k, repr(v)) for k, v in overrides.items()))
    if key not in _CACHE:
        run_dir = tmp / f"run{len(_CACHE)}"
        _CACHE[key] = train(tiny_config(scan, **overrides), run_dir)
    return _CACHE[key]


def lrs(result: TrainResult) -> list[float]:
    return [row["lr"] for row in result.history]


def losses(result: TrainResult) -> list[float]:
    return [row["train_loss"] for row in result.history]


class GradRecorder(Callback):
    """Records the gradients each optimiser step used (after Lightning's clipping): they are still
    in place at the end of the batch that triggered the step."""

    def __init__(self) -> None:
        self.max_abs: list[float] = []
        self.norms: list[float] = []
        self._step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step:
            return  # still accumulating
        self._step = trainer.global_step
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self.max_abs.append(max(float(g.abs().max()) for g in grads))
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


# ---------------------------------------------------------------------------------- checks

def check_accelerator(scan, tmp):
    assert resolve_accelerator("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    trainer = build_trainer(tiny_config(scan, **{"trainer.accelerator": "cpu"}), tmp / "acc")
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator.*--accelerator cpu"):
            build_trainer(tiny_config(scan, **{"trainer.accelerator": "gpu"}), tmp / "acc2")


def check_devices(scan, tmp):
    trainer = build_trainer(tiny_config(scan, **{"trainer.devices": 2, "trainer.accelerator": "cpu"}),
                            tmp / "dev")
    assert trainer.num_devices == 2


def check_num_nodes(scan, tmp):
    trainer = build_trainer(tiny_config(scan, **{"trainer.num_nodes": 2, "trainer.accelerator": "cpu"}),
                            tmp / "nodes")
    assert trainer.num_nodes == 2


def check_strategy(scan, tmp):
    trainer = build_trainer(tiny_config(scan, **{"trainer.strategy": "ddp", "trainer.accelerator": "cpu"}),
                            tmp / "strat")
    assert isinstance(trainer.strategy, DDPStrategy)
    with pytest.raises(ConfigError, match="deepspeed"):
        build_trainer(tiny_config(scan, **{"trainer.strategy": "deepspeed"}), tmp / "ds")


def check_deterministic(scan, tmp):
    a = train(tiny_config(scan), tmp / "det_a")
    b = train(tiny_config(scan), tmp / "det_b")
    assert losses(a) == pytest.approx(losses(b), rel=1e-6, abs=0)
    assert torch.are_deterministic_algorithms_enabled()
    build_trainer(tiny_config(scan, **{"trainer.deterministic": False}), tmp / "nondet")
    assert not torch.are_deterministic_algorithms_enabled()


def check_precision(scan, tmp):
    result = fit(scan, tmp, **{"trainer.precision": "bf16-mixed", "trainer.max_epochs": 1})
    assert result.trainer.precision == "bf16-mixed"
    assert math.isfinite(losses(result)[0])


def check_gradient_clip_val(scan, tmp):
    recorder = GradRecorder()
    config = tiny_config(scan, **{"trainer.gradient_clip_val": 1e-3, "trainer.max_epochs": 1})
    trainer = build_trainer(config, tmp / "clip", extra_callbacks=[recorder])
    assert trainer.gradient_clip_val == 1e-3
    _fit_with(trainer, config)
    assert recorder.norms and max(recorder.norms) <= 1e-3 * (1 + 1e-4)


def check_gradient_clip_algorithm(scan, tmp):
    recorder = GradRecorder()
    config = tiny_config(scan, **{"trainer.gradient_clip_val": 1e-4,
                                  "trainer.gradient_clip_algorithm": "value", "trainer.max_epochs": 1})
    trainer = build_trainer(config, tmp / "clipv", extra_callbacks=[recorder])
    _fit_with(trainer, config)
    assert max(recorder.max_abs) <= 1e-4 * (1 + 1e-5)
    assert max(recorder.norms) > 1e-4  # a norm clip would have kept the norm at 1e-4


def check_accumulate_grad_batches(scan, tmp):
    """Accumulation and clipping together: 3 batches per epoch with accum 2 -> 2 optimiser steps."""
    recorder = GradRecorder()
    config = tiny_config(scan, **{"trainer.accumulate_grad_batches": 2, "trainer.gradient_clip_val": 1e-3,
                                  "trainer.max_epochs": 1})
    trainer = build_trainer(config, tmp / "accum", extra_callbacks=[recorder])
    assert trainer.accumulate_grad_batches == 2
    _fit_with(trainer, config)
    n_batches = trainer.num_training_batches
    assert n_batches == 3
    assert trainer.global_step == math.ceil(n_batches / 2) == len(recorder.norms)
    assert max(recorder.norms) <= 1e-3 * (1 + 1e-4)


def _fit_with(trainer: L.Trainer, config) -> None:
    from ptycho_torch.data.dataset import PtychoDataModule
    from ptycho_torch.training.train import build_module

    L.seed_everything(config.training.seed, workers=True, verbose=False)
    dm = PtychoDataModule(config)
    trainer.fit(build_module(config, dm), datamodule=dm)


def _loader_checks(scan, tmp, attr, value, **extra):
    overrides = {"dataloader.num_workers": 1, **extra}
    result = fit(scan, tmp, **overrides, **{"trainer.max_epochs": 1})
    loaders = [result.trainer.train_dataloader, result.trainer.val_dataloaders]
    config = tiny_config(scan, **overrides)
    s = read_scan(scan)
    loaders.append(inference_loader(s, inference_groups(s, 1), config))
    for loader in loaders:
        assert getattr(loader, attr) == value, (attr, loader)


def check_num_workers(scan, tmp):
    _loader_checks(scan, tmp, "num_workers", 1)


def check_pin_memory(scan, tmp):
    _loader_checks(scan, tmp, "pin_memory", True, **{"dataloader.pin_memory": True})


def check_persistent_workers(scan, tmp):
    _loader_checks(scan, tmp, "persistent_workers", True, **{"dataloader.persistent_workers": True})
    with pytest.raises(ConfigError, match="persistent_workers.*num_workers"):
        DataLoaderConfig(persistent_workers=True)


def check_prefetch_factor(scan, tmp):
    _loader_checks(scan, tmp, "prefetch_factor", 3, **{"dataloader.prefetch_factor": 3})
    with pytest.raises(ConfigError, match="prefetch_factor.*num_workers"):
        DataLoaderConfig(prefetch_factor=2)


def check_learning_rate(scan, tmp):
    result = fit(scan, tmp, **{"optimizer.learning_rate": 3e-3, "optimizer.scheduler": "Default"})
    assert result.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(3e-3)
    assert lrs(result) == pytest.approx([3e-3, 3e-3])


def check_scheduler(scan, tmp):
    result = fit(scan, tmp, **{"optimizer.scheduler": "Exponential", "trainer.max_epochs": 3})
    assert lrs(result) == pytest.approx([1e-3, 0.9e-3, 0.81e-3])
    constant = fit(scan, tmp, **{"optimizer.scheduler": "Default", "trainer.max_epochs": 3})
    assert lrs(constant) == pytest.approx([1e-3] * 3)
    default = fit(scan, tmp, **{"trainer.max_epochs": 3})  # WarmupCosine, 1 warm-up epoch, to 1% of lr
    assert lrs(default) == pytest.approx(_warmup_cosine(1, 0.01, epochs=3))


def check_scheduler_gamma(scan, tmp):
    result = fit(scan, tmp, **{"optimizer.scheduler": "Exponential", "optimizer.scheduler_gamma": 0.5,
                               "trainer.max_epochs": 3})
    assert lrs(result) == pytest.approx([1e-3, 0.5e-3, 0.25e-3])


def check_scheduler_milestones(scan, tmp):
    result = fit(scan, tmp, **{"optimizer.scheduler": "MultiStage", "optimizer.scheduler_milestones": [2],
                               "optimizer.scheduler_gamma": 0.1, "trainer.max_epochs": 3})
    assert lrs(result) == pytest.approx([1e-3, 1e-3, 1e-4])


def _warmup_cosine_factor(epoch: int, warmup: int, total: int, min_ratio: float) -> float:
    """The documented WarmupCosine curve (docs/configuration.md), written out as a formula."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    progress = min(1.0, (epoch - warmup) / max(1, total - warmup - 1))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _warmup_cosine(warmup, min_ratio, epochs=4):
    return [1e-3 * _warmup_cosine_factor(e, warmup, epochs, min_ratio) for e in range(epochs)]


@pytest.mark.parametrize("warmup, total, min_ratio", [(0, 1, 0.01), (0, 4, 0.5), (1, 1, 0.01), (1, 2, 0.01),
                                                     (2, 4, 0.01), (3, 10, 0.1), (5, 5, 0.2), (6, 5, 0.1)])
def test_warmup_cosine_is_the_formula_at_every_step(warmup, total, min_ratio):
    # torch's SequentialLR(LinearLR, CosineAnnealingLR), stepped per epoch as Lightning does
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    scheduler = warmup_cosine(optimizer, warmup, total, min_ratio)
    got = []
    for _ in range(total):
        got.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [2e-3 * _warmup_cosine_factor(e, warmup, total, min_ratio) for e in range(total)]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if total - warmup >= 2:  # a decay of at least one step ends at min_ratio * lr
        assert got[-1] == pytest.approx(2e-3 * min_ratio)


def check_warmup_epochs(scan, tmp):
    result = fit(scan, tmp, **{"optimizer.scheduler": "WarmupCosine", "optimizer.warmup_epochs": 2,
                               "trainer.max_epochs": 4})
    assert lrs(result) == pytest.approx(_warmup_cosine(2, 0.01))
    assert lrs(result)[0] < lrs(result)[1] < 1e-3 + 1e-12


def check_min_lr_ratio(scan, tmp):
    result = fit(scan, tmp, **{"optimizer.scheduler": "WarmupCosine", "optimizer.warmup_epochs": 0,
                               "optimizer.min_lr_ratio": 0.5, "trainer.max_epochs": 4})
    assert lrs(result) == pytest.approx(_warmup_cosine(0, 0.5))
    assert lrs(result)[-1] == pytest.approx(0.5e-3)


def test_budget_cosine_follows_the_time_spent():
    # the factor is a function of the step (warm-up) and of the budget's fraction spent (Timer)
    from datetime import timedelta
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Timer

    from ptycho_torch.model.module import budget_cosine

    timer = Timer(duration=timedelta(seconds=100))
    trainer = SimpleNamespace(callbacks=[timer], strategy=SimpleNamespace(broadcast=lambda value: value))
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = budget_cosine(optimizer, trainer, warmup_steps=3, min_ratio=0.1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 1 / 4)  # step 0 of the warm-up, none spent
    for spent, expected in ((0.0, 1.0), (0.5, 0.1 + 0.9 * 0.5), (1.0, 0.1), (1.5, 0.1)):
        timer._offset = 100 * spent  # what a resumed run restores; no clock running
        for _ in range(4):  # past the warm-up
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * expected), spent
    timer._offset = 0.0  # epochs that end before the budget: the steps' fraction rules
    steps = budget_cosine(optimizer, trainer, warmup_steps=0, min_ratio=0.1, total_steps=10)
    for _ in range(5):
        optimizer.step()
        steps.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))


def check_max_epochs(scan, tmp):
    assert len(fit(scan, tmp, **{"trainer.max_epochs": 1}).history) == 1
    assert len(fit(scan, tmp).history) == 2


def check_max_time(scan, tmp):
    result = train(tiny_config(scan, **{"trainer.max_epochs": 100_000, "trainer.max_time": "00:00:00:03"}),
                   tmp / "budget")
    assert 1 <= result.epochs_completed < 100_000  # the budget, not the epoch count, ended it
    schedulers = result.trainer.lr_scheduler_configs
    assert schedulers[0].interval == "step" and isinstance(schedulers[0].scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert result.trainer.optimizers[0].param_groups[0]["lr"] < 0.5e-3  # more than half the budget spent
    for bad in (0, "3 minutes", {"minutes": -1}, {"weeks": 1}):
        with pytest.raises(ConfigError, match="trainer.max_time"):
            tiny_config(scan, **{"trainer.max_time": bad})
    minutes = tiny_config(scan, **{"trainer.max_time": 0.05}).trainer
    assert minutes.max_time == {"minutes": 0.05} and minutes.max_time_delta.total_seconds() == pytest.approx(3)
    trainer = build_trainer(tiny_config(scan, **{"trainer.max_time": {"hours": 1, "minutes": 30}}), tmp / "mt")
    timer = next(cb for cb in trainer.callbacks if isinstance(cb, Timer))
    assert timer.time_remaining() == pytest.approx(5400)


def _plateau(scan, tmp, **extra):
    # mode 'max' on a decreasing loss: the metric never "improves", so the plateau logic fires
    return fit(scan, tmp, **{"optimizer.scheduler": "ReduceLROnPlateau", "checkpoint.mode": "max",
                             "trainer.max_epochs": 4, **extra})


def check_plateau_factor(scan, tmp):
    result = _plateau(scan, tmp, **{"optimizer.plateau_factor": 0.25, "optimizer.plateau_patience": 0})
    # epoch 0 sets the best; every later epoch is "worse" and reduces at once (patience 0)
    assert lrs(result) == pytest.approx([1e-3, 1e-3, 0.25e-3, 0.0625e-3])


def check_plateau_patience(scan, tmp):
    result = _plateau(scan, tmp, **{"optimizer.plateau_factor": 0.5, "optimizer.plateau_patience": 1})
    # two bad epochs (1 and 2) are needed before the first reduction with patience 1
    assert lrs(result) == pytest.approx([1e-3, 1e-3, 1e-3, 0.5e-3])


def _checkpoints(result: TrainResult) -> list[Path]:
    return sorted(p for p in (result.run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")


def check_enable_checkpointing(scan, tmp):
    off = fit(scan, tmp, **{"trainer.enable_checkpointing": False, "trainer.max_epochs": 1})
    assert not any(isinstance(c, ModelCheckpoint) for c in off.trainer.callbacks)
    assert not (off.run_dir / "checkpoints").exists()
    on = fit(scan, tmp)
    assert (on.run_dir / "checkpoints" / "last.ckpt").is_file() and _checkpoints(on)


def check_save_top_k(scan, tmp):
    result = fit(scan, tmp, **{"checkpoint.save_top_k": 2, "trainer.max_epochs": 3})
    assert len(_checkpoints(result)) == 2
    assert len(_checkpoints(fit(scan, tmp, **{"trainer.max_epochs": 3}))) == 1


def check_monitor(scan, tmp):
    result = fit(scan, tmp, **{"checkpoint.monitor": "train_nll"})
    ckpt = result.trainer.checkpoint_callback
    assert ckpt.monitor == "train_nll"
    assert all("train_nll" in p.name for p in _checkpoints(result))


def check_mode(scan, tmp):
    result = fit(scan, tmp, **{"checkpoint.mode": "max", "trainer.max_epochs": 3})
    ckpt = result.trainer.checkpoint_callback
    assert ckpt.mode == "max"
    worst = max(row["val_loss"] for row in result.history)
    assert float(ckpt.best_model_score) == pytest.approx(worst, rel=1e-6)


def check_early_stop_patience(scan, tmp):
    result = fit(scan, tmp, **{"checkpoint.early_stop_patience": 1, "checkpoint.mode": "max",
                               "trainer.max_epochs": 5})
    assert any(isinstance(c, EarlyStopping) and c.patience == 1 for c in result.trainer.callbacks)
    assert len(result.history) == 2  # epoch 0 sets the best, epoch 1 does not beat it -> stop


def check_enable_progress_bar(scan, tmp):
    on = build_trainer(tiny_config(scan, **{"trainer.enable_progress_bar": True}), tmp / "pb1")
    off = build_trainer(tiny_config(scan, **{"trainer.enable_progress_bar": False}), tmp / "pb0")
    assert on.progress_bar_callback is not None and off.progress_bar_callback is None


def check_logger(scan, tmp):
    csv = fit(scan, tmp, **{"trainer.max_epochs": 1})
    assert list(csv.run_dir.glob("logs/version_*/metrics.csv"))
    none = fit(scan, tmp, **{"logging.logger": None, "trainer.max_epochs": 1})
    assert none.trainer.logger is None and not (none.run_dir / "logs").exists()
    tb = fit(scan, tmp, **{"logging.logger": "tensorboard", "trainer.max_epochs": 1})
    assert list(tb.run_dir.glob("logs/version_*/events.out.tfevents.*"))
    mlf = fit(scan, tmp, **{"logging.logger": "mlflow", "trainer.max_epochs": 1})
    assert type(mlf.trainer.logger).__name__ == "MLFlowLogger"
    assert (mlf.run_dir / "mlruns" / "mlflow.db").stat().st_size > 0


def check_log_images_every_n_epochs(scan, tmp):
    shown = fit(scan, tmp, **{"trainer.max_epochs": 1})  # the default (5) still shows the last epoch
    assert sorted(p.name for p in shown.run_dir.glob("logs/version_*/images/*.png")) == [
        "epoch000_amplitude.png", "epoch000_phase.png"]
    off = fit(scan, tmp, **{"trainer.max_epochs": 1, "logging.log_images_every_n_epochs": 0})
    assert not list(off.run_dir.glob("logs/version_*/images"))


def check_log_every_n_steps(scan, tmp):
    trainer = build_trainer(tiny_config(scan, **{"trainer.log_every_n_steps": 3}), tmp / "les")
    assert trainer.log_every_n_steps == 3


def test_inference_batch_size_sets_the_reconstruction_loader(scan, tmp_path):
    s = read_scan(scan)
    config = tiny_config(scan, **{"inference.batch_size": 7})
    assert inference_loader(s, inference_groups(s, 1), config).batch_size == 7
    assert inference_loader(s, inference_groups(s, 1), tiny_config(scan)).batch_size == 16


def test_training_seed_decides_the_losses(scan, tmp_path):
    tmp = tmp_path
    a = fit(scan, tmp, **{"training.seed": 1, "trainer.max_epochs": 1})
    b = fit(scan, tmp, **{"training.seed": 2, "trainer.max_epochs": 1})
    assert losses(a) != losses(b)
    c = train(tiny_config(scan, **{"training.seed": 1, "trainer.max_epochs": 1}), tmp / "seed_again")
    assert losses(c) == pytest.approx(losses(a), rel=1e-6, abs=0)
    assert losses(a) != pytest.approx(losses(b), rel=1e-3)


EFFECTS: dict[str, Callable[[Path, Path], None]] = {
    name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")
}


EXECUTION_SECTIONS = ("trainer", "optimizer", "dataloader", "checkpoint", "logging")
EXECUTION_FIELDS = [f"{section}.{f.name}" for section in EXECUTION_SECTIONS for f in fields(SECTIONS[section])]


@pytest.mark.parametrize("dotted", EXECUTION_FIELDS)
def test_every_execution_field_has_an_effect(dotted, scan, tmp_path):
    name = dotted.split(".")[1]
    assert name in EFFECTS, (f"{dotted} has no test of its effect: add check_{name} to "
                             "tests/test_execution_config.py")
    EFFECTS[name](scan, tmp_path)


def test_field_names_are_unique_and_every_check_has_its_field():
    names = [dotted.split(".")[1] for dotted in EXECUTION_FIELDS]
    assert len(names) == len(set(names))
    assert set(EFFECTS) <= set(names)


def test_the_defaults_are_the_benchmarked_model():
    """`train` with no model flags trains what benchmarks/quality.py measures (issue 28): gridsize 2,
    the half-width network, batch 4, lr 2e-3, warm-up + cosine. A benchmark setting that moves away
    from the defaults (or the reverse) fails here."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from quality import PRESETS, build_parser, run_config

    from ptycho_torch.config import RunConfig

    args = build_parser().parse_args([])  # the benchmark's own defaults, standard preset
    for key, value in PRESETS["standard"].items():
        setattr(args, key, value if getattr(args, key, None) is None else getattr(args, key))
    bench, default = run_config(args, Path("scan.npz"), 2), RunConfig()
    for dotted in ("model.gridsize", "model.n_filters_scale", "training.batch_size", "optimizer.learning_rate",
                   "optimizer.scheduler", "data.neighbor_count", "data.val_fraction"):
        section, name = dotted.split(".")
        assert getattr(getattr(default, section), name) == getattr(getattr(bench, section), name), dotted
    assert default.model.gridsize == 2 and default.optimizer.scheduler == "WarmupCosine"
