"""Configuration dataclasses for ptycho_torch: one per concern, plain data, validated on creation.

Every field has a default and a doc; creation checks values and raises `ConfigError` naming the field,
what was given and what is allowed. `RunConfig` bundles the sections of a run and round-trips through
YAML; dotted overrides (``trainer.accumulate_grad_batches=4``) are checked exactly like a YAML file. Plain
data (str, int, float, bool, None, lists): configs pickle to Ray workers and go into Tune search spaces.

    __init__.py      the sections of what is computed (data, model, training, inference, simulation),
                     RunConfig, YAML load/save, dotted overrides
    execution.py     the sections of how it runs: trainer, optimizer, dataloader, checkpoint, logging
    renamed.py       old names (the former `execution` section, trainer.max_epochs, ...) read as the new ones
    flag_names.py    the command-line spellings of common fields (--epochs -> trainer.max_epochs)
    typed_fields.py  the field-checking engine (ConfigSection, config_field) from type hints
    bounded_yaml.py  every YAML read with bounded expansion (alias bombs, deep nesting refused in one line)
    reference.py     the generated configuration reference (docs/configuration.md)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from ptycho_torch.config.bounded_yaml import yaml_problem
from ptycho_torch.config.execution import (
    CheckpointConfig,
    DataLoaderConfig,
    LoggingConfig,
    OptimizerConfig,
    TrainerConfig,
)
from ptycho_torch.config.renamed import renamed_dotted, renamed_sections
from ptycho_torch.config.typed_fields import ConfigError, ConfigSection, config_field

# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataConfig(ConfigSection):
    """Which scan to train on and how patterns are grouped and split."""

    section: typing.ClassVar[str] = "data"

    path: Union[str, list[str], None] = config_field(
        None, "scan file (.npz/.h5/.hdf5), a glob such as 'part*.npz', or a list of files (parts of one scan or "
        "several scans, see data.scans); `--data` sets it")
    val_fraction: float = config_field(0.1, "fraction of groups held out for validation (0 disables validation)")
    n_groups: Optional[int] = config_field(None, "number of training groups to draw (None = one per scan position)")
    neighbor_count: int = config_field(6, "gridsize>1: candidates (nearest neighbours) a group is drawn from")
    max_patterns: Optional[int] = config_field(None, "use only the first M patterns of the file, of each scan "
                                               "when training on several (None = all)")
    scans: Literal["auto", "one", "per_file"] = config_field(
        "auto", "several files: 'one' = parts of one scan (one frame, probe and normalisation); 'per_file' = each "
        "file a scan of its own (own probe, own normalisation, groups within the scan); 'auto' = files are parts "
        "of one scan when they share the probe, the scan_index values and the objectGuess, else separate scans")
    # beamline files (docs/data_format.md): where the arrays are, and how frames and positions are converted
    datasets: Optional[dict[str, str]] = config_field(
        None, "HDF5 dataset path of each role, for any layout (and over what CXI / NeXus discovery finds), e.g. "
        "{frames: /scan/ccd, x: /scan/samx, y: /scan/samy, energy: /scan/energy, distance: /scan/det_z, "
        "detector_pixel: /scan/pixel}; roles: frames, translation, x, y, xcoords, ycoords, energy, wavelength, "
        "distance, detector_pixel, detector_pixel_y, probe, mask. A role may live in another file (a relative "
        "path starts at the scan file's folder): OTHER.h5::/path (any role but frames; a `units` attribute as in "
        "the scan file), a text table of positions for translation / x / y (metres) or xcoords / ycoords (object "
        "pixels): positions.csv (.txt, .dat; a header such as `x_um,y_um` or a `# units: um` line says the unit; "
        "options after '::': x=COLUMN y=COLUMN units=UNIT), or a Ptychodus product.h5 (its probe_position_x_m / "
        "probe_position_y_m)")
    probe: Optional[str] = config_field(
        None, "probe to use instead of the file's: a .npy file, FILE.h5::/dataset, or a Ptychodus product file "
        "(product.h5: its probe, the first OPR mode), complex (N, N), (P, N, N) or sampled for the full detector "
        "frames")
    mask: Optional[str] = config_field(
        None, "detector mask, nonzero = excluded pixel (bad pixel, beamstop): a .npy file or FILE.h5::/dataset of "
        "the detector's frame shape (replaces a mask in the file); masked pixels read as 0 and are left out of "
        "the Poisson loss")
    frame_fit: Literal["crop", "bin"] = config_field(
        "crop", "frames larger than model.N: 'crop' = the N x N pixels around the beam centre; 'bin' = sum b x b "
        "pixels (b = frame // N), then crop")
    beam_center: Optional[list[float]] = config_field(
        None, "[row, column] of the direct beam on the detector, in detector pixels (None = the centroid of the "
        "mean pattern)")
    positions_transpose: bool = config_field(False, "swap the scan's x and y axes (before the flips)")
    positions_flip_x: bool = config_field(False, "negate the scan's x positions (columns)")
    positions_flip_y: bool = config_field(False, "negate the scan's y positions (rows)")
    energy_ev: Optional[float] = config_field(None, "photon energy in eV (None = the file's)")
    distance_m: Optional[float] = config_field(None, "sample-detector distance in metres (None = the file's)")
    detector_pixel_m: Optional[float] = config_field(None, "detector pixel size in metres (None = the file's)")

    def _check(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            self._fail("val_fraction", f"got {self.val_fraction}; must be in [0, 1)")
        if self.n_groups is not None and self.n_groups < 1:
            self._fail("n_groups", f"got {self.n_groups}; must be >= 1 or null")
        if self.neighbor_count < 1:
            self._fail("neighbor_count", f"got {self.neighbor_count}; must be >= 1")
        if self.max_patterns is not None and self.max_patterns < 1:
            self._fail("max_patterns", f"got {self.max_patterns}; must be >= 1 or null")
        self._check_beamline()

    def _check_beamline(self) -> None:
        if self.datasets is not None:
            if not isinstance(self.datasets, dict) or not all(isinstance(v, str) for v in self.datasets.values()):
                self._fail("datasets", f"got {self.datasets!r}; expected a mapping of role -> dataset path, "
                           "e.g. {frames: /entry/data/data}")
            unknown = sorted(set(self.datasets) - set(ROLES))
            if unknown:
                self._fail("datasets", f"unknown role(s) {', '.join(map(str, unknown))}; roles are {', '.join(ROLES)}")
            for role, where in self.datasets.items():
                head, sep, tail = where.partition("::")
                if not where.strip() or sep and not (head.strip() and tail.strip()):
                    self._fail("datasets", f"{role}: got {where!r}; give a dataset path, OTHER.h5::/path/in/it or "
                               "positions.csv[::units=um]")
                if role == "frames" and sep:
                    self._fail("datasets", f"frames: got {where!r}; frames are read from the scan file itself: give "
                               f"--data {where}, and the other roles as FIRST.h5::/path")
        if self.beam_center is not None and len(self.beam_center) != 2:
            self._fail("beam_center", f"got {self.beam_center}; expected [row, column]")
        for name in ("energy_ev", "distance_m", "detector_pixel_m"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                self._fail(name, f"got {getattr(self, name)}; must be > 0 or null")


# the roles a dataset of a beamline file can play (data.datasets keys; ptycho_torch.data.beamline reads them)
ROLES = ("frames", "translation", "x", "y", "xcoords", "ycoords", "energy", "wavelength", "distance",
         "detector_pixel", "detector_pixel_y", "probe", "mask")
MODEL_SIZES: tuple[int, ...] = (32, 64, 128)  # the pattern sizes ModelConfig.N accepts


@dataclass(frozen=True)
class ModelConfig(ConfigSection):
    """The network and the trainable physics parameters."""

    section: typing.ClassVar[str] = "model"
    # what a model saved before each of these fields existed used: a saved config (a bundle) that
    # lacks a field takes this value, not today's default, so old models load as they were trained
    saved_before: typing.ClassVar[dict[str, Any]] = {
        "network_input": "amplitude", "group_network": "joint", "intensity_scale_start": "unit",
        "decoder": "plain", "partner_input": False, "merge_weight": "ones"}

    N: Optional[Literal[32, 64, 128]] = config_field(
        None, "diffraction pattern / object patch size in pixels (None = the scan's own size)")
    gridsize: int = config_field(2, "patterns per group along one side (C = gridsize**2); 2 = the benchmarks' best")
    n_filters_scale: float = config_field(0.5, "width multiplier: encoder filters 32f, 64f, 128f (, 256f); upstream: 2")
    probe_trainable: bool = config_field(False, "refine the probe during training")
    intensity_scale_trainable: bool = config_field(True, "learn the scalar intensity scale s = exp(log_s)")
    network_input: Literal["backprop", "amplitude"] = config_field(
        "backprop", "what the network sees: 'backprop' = each amplitude back-propagated to the sample plane "
        "with the probe's far-field phase (real, imaginary), 'amplitude' = the normalised amplitude (upstream)")
    group_network: Literal["per_pattern", "joint"] = config_field(
        "per_pattern", "gridsize>1: 'per_pattern' = one network applied to each pattern of a group, coupled by "
        "the overlap constraint; 'joint' = all C patterns as channels of one network (upstream)")
    overlap_constraint: bool = config_field(
        True, "gridsize>1: train (and reconstruct) through the overlap constraint; false = independent patches")
    intensity_scale_start: Literal["typical", "unit"] = config_field(
        "typical", "where the scale starts: the head's typical output (0.5) carries the data's energy, or "
        "an amplitude of 1 does (the old start, which saturated the amplitude)")
    partner_input: bool = config_field(
        True, "gridsize>1 with per_pattern and backprop (otherwise no effect): each pattern's network also reads "
        "the back-propagated estimates of its group partners, translated into its own frame (the overlap "
        "ptychography rests on; +0.09 phase SSIM at equal steps in the ablation)")
    decoder: Literal["unet", "plain"] = config_field(
        "unet", "'unet' = decoders with skip connections from every encoder block and bilinear upsampling; "
        "'plain' = upstream's decoders (bottleneck only, nearest-neighbour upsampling)")
    merge_weight: Literal["ones", "probe"] = config_field(
        "probe", "gridsize>1: weight of each patch in the overlap merge: |probe|^2 (each patch speaks where its "
        "probe lit the object; the ablation's winner with U-Net decoders) or all ones")

    def _check(self) -> None:
        if not 1 <= self.gridsize <= 4:
            self._fail("gridsize", f"got {self.gridsize}; must be 1, 2, 3 or 4")
        if self.n_filters_scale <= 0 or round(32 * self.n_filters_scale) < 1:
            self._fail("n_filters_scale", f"got {self.n_filters_scale}; must give >= 1 filter "
                       "(32 * n_filters_scale >= 1, e.g. 0.25 -> 8/16/32 filters)")

    @property
    def channels(self) -> int:
        return self.gridsize * self.gridsize

    @property
    def reads_partners(self) -> bool:
        """Whether each pattern's network reads its partners' estimates (partner_input in effect)."""
        return (self.partner_input and self.gridsize > 1 and self.network_input == "backprop"
                and self.group_network == "per_pattern")


@dataclass(frozen=True)
class TrainingConfig(ConfigSection):
    """What is learned from what: batch size, the loss terms, the starting weights, the seed (how long:
    trainer.max_epochs / trainer.max_time)."""

    section: typing.ClassVar[str] = "training"

    batch_size: int = config_field(4, "groups per optimisation step per device (4 = 16 patterns at gridsize 2)")
    nll_weight: float = config_field(1.0, "weight of the Poisson negative log-likelihood (photon counts)")
    mae_weight: float = config_field(0.0, "weight of the mean absolute error on normalised amplitudes")
    tv_weight: float = config_field(0.0, "weight of the total-variation penalty on the object patches")
    eps: float = config_field(1e-6, "floor added to the predicted counts inside the log (photons)")
    init_from: Optional[str] = config_field(
        None, "warm start: a model bundle (model.pt) or training run directory whose network weights this run "
        "starts from (a new optimiser; probe and normalisation come from this run's data); `--init-from` sets it")
    freeze: Union[str, list[str]] = config_field(
        [], "with init_from: parts of the network kept fixed while fine-tuning, any of 'encoder', 'decoders'; "
        "`--freeze encoder` sets it")
    seed: int = config_field(42, "seed for torch, numpy, python and DataLoader workers")

    def _check(self) -> None:
        if self.batch_size < 1:
            self._fail("batch_size", f"got {self.batch_size}; must be >= 1")
        for name in ("nll_weight", "mae_weight", "tv_weight"):
            if getattr(self, name) < 0:
                self._fail(name, f"got {getattr(self, name)}; must be >= 0")
        if self.nll_weight == 0 and self.mae_weight == 0:
            self._fail("nll_weight", "nll_weight and mae_weight are both 0; the loss would be empty")
        if self.eps <= 0:
            self._fail("eps", f"got {self.eps}; must be > 0")
        if isinstance(self.freeze, str):  # `--freeze encoder`
            object.__setattr__(self, "freeze", [self.freeze])
        unknown = [p for p in self.freeze if p not in FREEZABLE]
        if unknown:
            self._fail("freeze", f"got {unknown}; parts that can be frozen are {', '.join(FREEZABLE)}")
        if self.freeze and not self.init_from:
            self._fail("freeze", "freezing parts of an untrained network keeps them random; give the trained "
                       "model to start from with --init-from BUNDLE (training.init_from), or drop --freeze")


FREEZABLE: tuple[str, ...] = ("encoder", "decoders")  # training.freeze: PtychoNet.blocks; amplitude/phase decoders


@dataclass(frozen=True)
class InferenceConfig(ConfigSection):
    """How reconstructions are stitched."""

    section: typing.ClassVar[str] = "inference"

    stitch_weight: Literal["probe", "mask"] = config_field(
        "probe", "stitching weight: |probe|^2 or a central disk mask of radius N/4")
    weight_threshold: float = config_field(
        1e-3, "object pixels whose weight sum is below this fraction of the maximum are set to 0")
    dtype: Literal["auto", "float32", "bfloat16"] = config_field(
        "auto", "network dtype during inference: 'auto' = bfloat16 where the device computes it natively (CUDA GPUs "
        "with bf16, CPUs with AVX512-BF16 or AMX), else float32; bfloat16 runs the convolutions under autocast, the "
        "physics stays float32 (docs/benchmarks.md: same SSIM and data fit, 1.3-2.6x faster)")
    grouping: Literal["cover", "every_pattern"] = config_field(
        "cover", "gridsize > 1: 'cover' stitches every channel of about M / C groups that hold each pattern "
        "once (the network reads each pattern about once); 'every_pattern' forms one group per pattern and "
        "stitches only its own channel (C times the network work)")
    batch_size: Optional[int] = config_field(None, "reconstruction batch size (None = training.batch_size)")
    fit_patterns: int = config_field(
        2048, "patterns (evenly spread through the scan) on which a written reconstruction's data fit is "
        "measured: Poisson deviance of the object's predicted patterns / the counting-noise floor, in "
        "object.npz's metadata (data_fit) and fit.png; 0 = not measured")

    def _check(self) -> None:
        if not 0 <= self.weight_threshold < 1:
            self._fail("weight_threshold", f"got {self.weight_threshold}; must be in [0, 1)")
        if self.batch_size is not None and self.batch_size < 1:
            self._fail("batch_size", f"got {self.batch_size}; must be >= 1 or null")
        if self.fit_patterns < 0:
            self._fail("fit_patterns", f"got {self.fit_patterns}; must be >= 0 (0 = no data fit)")


@dataclass(frozen=True)
class SimulationConfig(ConfigSection):
    """A synthetic scan: object, probe, scan pattern and photon dose (`ptycho-torch simulate`)."""

    section: typing.ClassVar[str] = "simulation"

    N: int = config_field(64, "diffraction pattern size in pixels (even)")
    object: str = config_field("lines", "object generator: lines, dead_leaves, grf, soft_lines (upstream's lines study), siemens_star (a "
        "resolution test pattern), texture (fibres / cells), mixed (each field one of lines, dead_leaves, grf, "
        "siemens_star, texture: a corpus that is no family's specialist), or a path to a 2-D .npy image (e.g. a "
        "photograph)")
    phase_object: Optional[str] = config_field(None, "optional .npy image used as the phase (radians scaled to max_phase)")
    max_phase: float = config_field(1.5, "largest phase excursion of the object in radians")
    min_amplitude: float = config_field(0.5, "smallest object amplitude (amplitude spans [min_amplitude, 1])")
    n_positions: int = config_field(400, "number of scan positions (diffraction patterns)")
    scan: Literal["raster", "spiral"] = config_field("raster", "jittered raster or Fermat spiral")
    overlap: float = config_field(0.7, "linear overlap of neighbouring probe footprints, in [0, 1)")
    jitter: float = config_field(0.1, "raster jitter as a fraction of the scan step")
    probe_diameter_px: Optional[float] = config_field(None, "probe footprint diameter in pixels (None = N/2)")
    probe_defocus: float = config_field(8.0, "quadratic pupil phase at the aperture edge in radians; a "
                                        "defocused probe breaks the twin-image ambiguity of a real, symmetric focus "
                                        "(0 = in focus)")
    probe_modes: int = config_field(1, "incoherent probe modes")
    patch_extraction: Literal["fourier", "bilinear"] = config_field(
        "fourier", "how object patches are cut at sub-pixel positions: a Fourier shift (the model's own "
        "convention) or bilinear interpolation (as many other simulators do), to test a model on data it "
        "was not built around")
    nphotons: float = config_field(1e6, "mean photons per diffraction pattern")
    seed: int = config_field(0, "random seed (object, positions, Poisson noise)")

    def _check(self) -> None:
        if self.N not in MODEL_SIZES:
            sizes = ", ".join(str(n) for n in MODEL_SIZES[:-1]) + f" or {MODEL_SIZES[-1]}"
            self._fail("N", f"got {self.N}; the network trains only on {sizes} pixel patterns "
                       f"(model.N), so use --N {sizes}")
        if not 0 <= self.overlap < 1:
            self._fail("overlap", f"got {self.overlap}; must be in [0, 1)")
        if self.n_positions < 1:
            self._fail("n_positions", f"got {self.n_positions}; must be >= 1")
        if self.nphotons <= 0:
            self._fail("nphotons", f"got {self.nphotons}; must be > 0")
        if self.probe_modes < 1:
            self._fail("probe_modes", f"got {self.probe_modes}; must be >= 1")
        if not 0 <= self.jitter < 0.5:
            self._fail("jitter", f"got {self.jitter}; must be in [0, 0.5)")
        if not 0 < self.min_amplitude <= 1:
            self._fail("min_amplitude", f"got {self.min_amplitude}; must be in (0, 1]")
        if self.probe_diameter_px is not None and not 2 <= self.probe_diameter_px <= self.N:
            self._fail("probe_diameter_px", f"got {self.probe_diameter_px}; must be in [2, N]")


SECTIONS: dict[str, type[ConfigSection]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "inference": InferenceConfig,
    "trainer": TrainerConfig,
    "optimizer": OptimizerConfig,
    "dataloader": DataLoaderConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """All sections of one run. `RunConfig.from_dict(yaml.safe_load(open('run.yaml')))`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    dataloader: DataLoaderConfig = field(default_factory=DataLoaderConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "config") -> "RunConfig":
        """Build from a mapping of sections; old names (see config.renamed) are read as the new ones, with
        one notice naming `where` they were found."""
        data = renamed_sections(dict(data or {}), where)
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown section(s) {', '.join(unknown)}; "
                              f"known sections are {', '.join(SECTIONS)}")
        parts = {}
        for name, sec in SECTIONS.items():
            value = data.get(name)
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a mapping of fields (e.g. `{name}: {{{next(iter(sec.field_docs()))}: ...}}`), "
                                  f"got {value!r}; give its fields or remove the section")
            parts[name] = sec.from_dict(value)
        return cls(**parts)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    def replace(self, **sections: Any) -> "RunConfig":
        return dataclasses.replace(self, **sections)

    @property
    def inference_batch_size(self) -> int:
        return self.inference.batch_size or self.training.batch_size


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return `config` with dotted overrides applied, e.g. {'trainer.accumulate_grad_batches': 4}.

    Values are checked exactly as in a YAML file; an unknown section or field raises ConfigError.
    """
    data = config.to_dict()
    for dotted, value in renamed_dotted(dict(overrides), "override").items():
        section, _, name = dotted.partition(".")
        if section not in SECTIONS or not name:
            raise ConfigError(f"{dotted}: expected 'section.field' with section one of "
                              f"{', '.join(SECTIONS)}")
        known = {f.name for f in fields(SECTIONS[section])}
        if name not in known:
            raise ConfigError(f"{dotted}: unknown field; {section} has {', '.join(sorted(known))}")
        data[section][name] = value
    return RunConfig.from_dict(data)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The mapping in a YAML file (empty file = {}); a missing file, invalid YAML or another kind of
    document is one ConfigError naming the file (`what` says which kind of file it is)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    from ptycho_torch.config.bounded_yaml import BoundExceeded, load_bounded

    try:
        data = load_bounded(path.read_text()) or {}
    except BoundExceeded as e:
        raise ConfigError(f"{what} {path}: refused, {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML ({yaml_problem(e)}); fix the YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run YAML file (any subset of sections/fields); missing fields take defaults."""
    data = read_yaml_mapping(path)
    try:
        return RunConfig.from_dict(data, str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def save_run_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config (every field) as YAML; the file is itself a valid --config."""
    from ptycho_torch.safe_output import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
