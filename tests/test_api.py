"""The Python API (`import ptycho_torch as pt`): in-memory reconstruction equals the file path,
keywords mirror the CLI flags, bad arguments are one clear UserError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ptycho_torch as pt
from ptycho_torch.config import ConfigError
from ptycho_torch.data.validation import ScanValidationError
from ptycho_torch.errors import UserError

TINY = {"N": 32, "epochs": 1, "batch_size": 16, "logger": None, "progress_bar": False,
        "overrides": {"model.n_filters_scale": 0.25}}


@pytest.fixture(scope="module")
def run(tiny_scan, tmp_path_factory):
    return pt.train(tiny_scan, tmp_path_factory.mktemp("api") / "run", **TINY)


@pytest.fixture(scope="module")
def arrays(tiny_scan):
    with np.load(tiny_scan) as z:
        return {k: z[k] for k in ("diffraction", "xcoords", "ycoords", "objectGuess")}


def test_import_is_light_and_exports_the_api():
    code = ("import sys, ptycho_torch as pt\n"
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules\n"
            "assert pt.__version__\n"
            "names = ['simulate', 'train', 'reconstruct', 'evaluate', 'read_scan', 'RunConfig']\n"
            "assert all(callable(getattr(pt, n)) for n in names)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (Path(pt.__file__).parent / "py.typed").is_file()


def test_train_keywords_are_the_cli_flags(run):
    config = pt.RunConfig.from_dict({})
    assert run.bundle_path.is_file() and run.epochs_completed == 1
    saved = pt.api.run_config(run.run_dir / "config.yaml")
    assert (saved.model.N, saved.trainer.max_epochs, saved.training.batch_size) == (32, 1, 16)
    assert saved.model.n_filters_scale == 0.25 and saved.logging.logger is None
    assert config.trainer.max_epochs != 1  # the keywords changed it, not the defaults
    with pytest.raises(ConfigError, match="batchsize: unknown keyword.*batch_size"):
        pt.api.run_config(batchsize=8)
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        pt.api.run_config(epochs=0)


def test_reconstruct_from_arrays_equals_the_file_path(run, tiny_scan, arrays, tmp_path):
    from_file, weight = pt.reconstruct(run.run_dir, tiny_scan, out=tmp_path / "recon", with_weight=True)
    assert (tmp_path / "recon" / "object.npz").is_file() and from_file.dtype == np.complex64
    written = np.load(tmp_path / "recon" / "object.npz")["object"]
    np.testing.assert_array_equal(written, from_file)
    positions = np.stack([arrays["xcoords"], arrays["ycoords"]], axis=1)
    in_memory = pt.reconstruct(run.run_dir, diffraction=arrays["diffraction"], positions=positions,
                               object_guess=arrays["objectGuess"])
    assert in_memory.shape == from_file.shape
    assert np.abs(in_memory - from_file).max() <= 1e-6
    assert np.abs(from_file).max() > 0
    # integer photon counts (the simulation's Poisson counts) give the same object, as does a
    # bundle loaded once and a train result; without object_guess the canvas is the scan's extent
    counts = np.rint(arrays["diffraction"].astype(np.float64) ** 2).astype(np.uint16)
    from ptycho_torch.model.bundle import load_bundle

    for model in (load_bundle(run.run_dir), run):
        again = pt.reconstruct(model, diffraction=counts, positions=positions, object_guess=arrays["objectGuess"])
        assert np.abs(again - from_file).max() <= 1e-6
    bare = pt.reconstruct(run, diffraction=arrays["diffraction"], positions=positions)
    assert bare.shape[0] <= from_file.shape[0] and bare.shape[1] <= from_file.shape[1]
    # evaluate: the file and the in-memory (object, weight) score the same
    on_file = pt.evaluate(tmp_path / "recon", tiny_scan)
    in_mem = pt.evaluate((from_file, weight), arrays["objectGuess"])
    for key in ("amplitude_ssim", "phase_ssim", "phase_psnr"):
        assert in_mem[key] == pytest.approx(on_file[key], rel=1e-6)


def test_reconstruct_a_scan_in_memory(run):
    scan = pt.simulate(N=32, n_positions=24, seed=3, nphotons=1e5)
    assert scan.path is None and scan.diffraction.shape == (24, 32, 32)
    obj = pt.reconstruct(run, scan)
    assert obj.shape == scan.object_shape and np.isfinite(obj).all()


def test_bad_arguments_are_one_clear_error(run, arrays):
    positions = np.stack([arrays["xcoords"], arrays["ycoords"]], axis=1)
    d = arrays["diffraction"]
    with pytest.raises(ScanValidationError, match=r"positions: expected shape \(n, 2\)"):
        pt.reconstruct(run, diffraction=d, positions=positions.T)
    with pytest.raises(ScanValidationError, match=r"positions\[:, 0\] \(x\): expected length M = 64"):
        pt.reconstruct(run, diffraction=d, positions=positions[:10])
    with pytest.raises(ScanValidationError, match="integer photon counts must be >= 0"):
        pt.reconstruct(run, diffraction=-np.ones(d.shape, np.int32), positions=positions)
    with pytest.raises(ScanValidationError, match=r"positions\[:, 1\] \(y\): .*outside"):
        pt.reconstruct(run, diffraction=d, positions=positions - [0, 40])
    with pytest.raises(UserError, match="diffraction= .* and positions= .* go together"):
        pt.reconstruct(run, diffraction=d)
    with pytest.raises(UserError, match="not both"):
        pt.reconstruct(run, "scan.npz", diffraction=d, positions=positions)
    with pytest.raises(UserError, match="model: expected a run directory"):
        pt.reconstruct(42, diffraction=d, positions=positions)
    with pytest.raises(FileNotFoundError, match="no model bundle"):
        pt.reconstruct("no_such_run", diffraction=d, positions=positions)
    with pytest.raises(ConfigError, match="--inference-batch-size: got 0"):
        pt.reconstruct(run, diffraction=d, positions=positions, inference_batch_size=0)
    with pytest.raises(ConfigError, match="simulation: unknown field.*n_position"):
        pt.simulate(n_position=10)


def test_frames_of_another_probe_match_the_file_path(run, tmp_path):
    """A scan taken with another probe: its frames with probe=<that probe> give the file's numbers
    (the file's probe is the 'scan' probe), for both normalisations; without it, the model's probe
    gives another object."""
    other = pt.simulate(tmp_path / "other.npz", N=32, n_positions=48, seed=5, nphotons=1e5, probe_defocus=3.0)
    scan = pt.read_scan(other)
    frames = {"diffraction": scan.diffraction_block(0, scan.n_patterns), "positions": scan.positions,
              "object_guess": scan.object_guess}
    for normalization in ("scan", "model"):
        on_file = pt.reconstruct(run, other, normalization=normalization)
        in_memory = pt.reconstruct(run, probe=scan.probe, normalization=normalization, **frames)
        assert np.abs(in_memory - on_file).max() <= 1e-6
    assert np.abs(pt.reconstruct(run, normalization="model", **frames) - on_file).max() > 1e-3
    with pytest.raises(UserError, match="probe array go with diffraction="):
        pt.reconstruct(run, other, probe=scan.probe)


def test_train_resume_and_config_forms(tiny_scan, tmp_path):
    first = pt.train(tiny_scan, tmp_path / "run", config=pt.RunConfig.from_dict({"trainer": {"max_epochs": 1}}),
                     **{k: v for k, v in TINY.items() if k != "epochs"})
    assert first.epochs_completed == 1
    resumed = pt.train(out=tmp_path / "run", resume=True, epochs=2)  # config.yaml of the run, then the flags
    assert resumed.epochs_completed == 2 and [row["epoch"] for row in resumed.history] == [0.0, 1.0]
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        pt.train(resume=tmp_path / "nothing")
    with pytest.raises(ConfigError, match="train needs --out RUN_DIR"):
        pt.train(tiny_scan)


def test_simulate_a_corpus(tmp_path):
    paths = pt.simulate(tmp_path / "corpus", n_scans=2, N=32, n_positions=16, nphotons_range=(1e4, 1e6))
    assert [p.name for p in paths] == ["scan_000.npz", "scan_001.npz"]
    energies = [pt.read_scan(p).mean_energy() for p in paths]
    assert energies[1] > 10 * energies[0]  # the doses spread over the range
    with pytest.raises(ConfigError, match="add --n-scans K"):
        pt.simulate(tmp_path / "x.npz", nphotons_range=(1e4, 1e6))


def test_network_dtype_auto_is_bfloat16_only_where_the_device_computes_it(run, tiny_scan, tmp_path):
    """'auto' (the default inference.dtype) takes bfloat16 on CPUs with AVX512-BF16 / AMX and CUDA GPUs with
    bf16, float32 elsewhere; the object stays what float32 gives (bfloat16 rounding only) and the metadata
    says which ran."""
    import json

    import torch

    from ptycho_torch.reconstruction.reconstruct import network_dtype

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert network_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
    assert network_dtype("float32", "cpu") == "float32" and network_dtype("bfloat16", "cpu") == "bfloat16"
    full = pt.reconstruct(run, tiny_scan, tmp_path / "f32", dtype="float32", full_result=True)
    auto = pt.reconstruct(run, tiny_scan, tmp_path / "auto", dtype="auto", full_result=True)
    scale = float(np.abs(full.object).max())
    assert np.abs(auto.object - full.object).max() <= 0.02 * scale
    with np.load(tmp_path / "auto" / "object.npz") as z:
        assert json.loads(str(z["metadata"]))["dtype"] == network_dtype("auto", "cpu")
    with pytest.raises(UserError, match="--dtype: got 'float16'"):
        pt.reconstruct(run, tiny_scan, tmp_path / "bad", dtype="float16")


def test_train_takes_lightning_logger_and_callback_objects(tiny_scan, tmp_path):
    """`pt.train(loggers=[...], callbacks=[...])`: a user's own Lightning Logger receives the run's
    metrics next to the configured csv logger, a user's Callback runs; other objects are one line."""
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger

    class Recording(Logger):
        name, version = "recording", 0

        def __init__(self):
            super().__init__()
            self.metrics: list[dict] = []
            self.params = None

        def log_metrics(self, metrics, step=None):
            self.metrics.append(dict(metrics))

        def log_hyperparams(self, params, *args, **kwargs):
            self.params = params

    class CountEpochs(Callback):
        epochs = 0

        def on_train_epoch_end(self, trainer, module):
            CountEpochs.epochs += 1

    mine = Recording()
    result = pt.train(tiny_scan, tmp_path / "run", loggers=[mine], callbacks=[CountEpochs()],
                      **{**TINY, "logger": "csv", "epochs": 2})
    assert CountEpochs.epochs == 2
    assert any("train_loss" in m for m in mine.metrics) and any("val_loss" in m for m in mine.metrics)
    assert mine.params is not None  # the run's hyper-parameters (the RunConfig)
    assert list((result.run_dir / "logs").glob("version_*/metrics.csv"))  # the configured logger kept
    with pytest.raises(ConfigError, match="loggers: expected Logger objects.*the class Recording"):
        pt.train(tiny_scan, tmp_path / "bad", loggers=[Recording], **TINY)
    with pytest.raises(ConfigError, match="callbacks: expected Callback objects.*a Recording"):
        pt.train(tiny_scan, tmp_path / "bad", callbacks=[mine], **TINY)
    assert not (tmp_path / "bad").exists()


def test_reconstruct_defaults_to_a_gpu_when_there_is_one_and_bars_show_in_notebooks(monkeypatch):
    """`reconstruct --device auto` (the default, like train's) resolves to CUDA only where CUDA is; progress
    bars default to on in a Jupyter kernel, whose stderr is no terminal."""
    import types

    import torch

    from ptycho_torch.api import resolve_device
    from ptycho_torch.cli.main import build_parser
    from ptycho_torch.logging_setup import in_notebook, show_progress

    args = build_parser().parse_args(["reconstruct", "--model", "run", "--data", "scan.npz", "--out", "recon"])
    assert args.device == "auto"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert show_progress(True) and not show_progress(False)
    assert not in_notebook() and show_progress(None) is sys.stderr.isatty()  # no kernel: a terminal decides

    class ZMQInteractiveShell:  # what get_ipython() returns inside a Jupyter kernel
        pass

    fake = types.ModuleType("IPython")
    fake.get_ipython = ZMQInteractiveShell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert in_notebook() and show_progress(None) is True
