"""PNG figures: object amplitude/phase, reconstruction vs truth, FRC, loss curves, sweep curves.

matplotlib is imported inside each function and figures are drawn on the Agg canvas through the
object-oriented API (`matplotlib.figure.Figure`), never through pyplot: no global figure state, no
GUI backend, safe in worker processes; a figure is released when the function returns. Every
function writes one PNG (parents created) and returns its path.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.evaluation.metrics import FRC_17, FRC_HALF, align_pair, scanned_region

DPI = 110
LOSS_COLUMNS = ("train_loss", "train_loss_epoch", "val_loss", "val_loss_epoch")


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.5, 4.5)) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: str | Path) -> Path:
    from ptycho_torch.safe_output import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:  # the temporary name keeps the suffix: the format is inferred
        fig.savefig(tmp, dpi=DPI)
    fig.clear()
    return path


def _limits(values: np.ndarray) -> tuple[float, float]:
    """Robust colour limits (0.5 / 99.5 percentiles) of the finite values; a tiny span is widened."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, [0.5, 99.5]))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def physical_unit(extent_m: float) -> tuple[str, float]:
    """(unit, metres per unit) for an axis spanning `extent_m` metres: um from 1 um up, else nm."""
    return ("\u00b5m", 1e-6) if extent_m >= 1e-6 else ("nm", 1e-9)


def _show(fig: Any, ax: Any, img: np.ndarray, title: str, cmap: str, label: str,
          limits: tuple[float, float] | None = None, origin: tuple[int, int] = (0, 0),
          pixel_size_m: float | None = None) -> None:
    """imshow with masked pixels (NaN) in light grey, a colourbar labelled `label`, axes in px of the
    full image (`origin` = (y0, x0) of a cropped `img`), or in um / nm with `pixel_size_m`."""
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    lo, hi = limits if limits is not None else _limits(img)
    (y0, x0), (h, w) = origin, img.shape
    extent = np.array([x0 - 0.5, x0 + w - 0.5, y0 + h - 0.5, y0 - 0.5])
    unit = "px"
    if pixel_size_m:
        unit, per = physical_unit(max(h, w) * pixel_size_m)
        extent = extent * (pixel_size_m / per)
    im = ax.imshow(np.ma.masked_invalid(img), cmap=cm, vmin=lo, vmax=hi, interpolation="nearest",
                   extent=tuple(float(e) for e in extent))
    ax.set_title(title)
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    fig.colorbar(im, ax=ax, label=label, shrink=0.85)


def _phase_cmap(lo: float, hi: float) -> tuple[str, tuple[float, float]]:
    """Cyclic 'twilight' over (-pi, pi] when the phase spans more than pi, else 'viridis'."""
    return ("twilight", (-math.pi, math.pi)) if hi - lo > math.pi else ("viridis", (lo, hi))


def save_complex_images(obj: np.ndarray, out_dir: str | Path, prefix: str = "",
                        weight: np.ndarray | None = None, weight_threshold: float = 0.0,
                        pixel_size_m: float | None = None) -> tuple[Path, Path]:
    """Write `{prefix}amplitude.png` and `{prefix}phase.png` of a complex object (H, W); with the
    object pixel size (metres) the axes are in um or nm, else in pixels.

    Pixels where `weight` (H, W) <= weight_threshold * max(weight) (i.e. never seen by the scan with
    the default 0) are shown grey and excluded from the colour limits. The phase is shown with the
    global offset removed (arg of the mean over the shown pixels set to 0), in radians.
    """
    obj = np.asarray(obj)
    if obj.ndim != 2:
        raise ValueError(f"obj must be a complex image (H, W), got shape {obj.shape}")
    shown = np.ones(obj.shape, dtype=bool) if weight is None else scanned_region(weight, weight_threshold)
    if weight is not None and not shown.any():
        shown = np.ones(obj.shape, dtype=bool)
    total = np.sum(obj[shown])
    rotated = obj * np.exp(-1j * np.angle(total)) if abs(total) > 0 else obj
    amp = np.where(shown, np.abs(obj), np.nan)
    phase = np.where(shown, np.angle(rotated), np.nan)
    out_dir = Path(out_dir)
    paths = []
    fig, ax = _figure()
    _show(fig, ax[0, 0], amp, "object amplitude |O|", "gray", "amplitude (transmission, unitless)",
          pixel_size_m=pixel_size_m)
    paths.append(_save(fig, out_dir / f"{prefix}amplitude.png"))
    fig, ax = _figure()
    cmap, lim = _phase_cmap(*_limits(phase))
    _show(fig, ax[0, 0], phase, "object phase arg O (global offset removed)", cmap, "phase (rad)", lim,
          pixel_size_m=pixel_size_m)
    paths.append(_save(fig, out_dir / f"{prefix}phase.png"))
    return paths[0], paths[1]


def save_comparison(recon: np.ndarray, truth: np.ndarray, path: str | Path, weight: np.ndarray | None = None,
                    plane_fit: bool = False, weight_threshold: float = 0.1, erode_px: int = 0) -> Path:
    """2x3 grid over the scanned region: rows amplitude / phase; columns truth, recon, recon - truth.

    recon, truth: (H, W) complex in the same pixel frame. The reconstruction is phase-aligned (and
    ramp-corrected with `plane_fit`) and amplitude-scaled as in `metrics.evaluate_reconstruction`;
    truth and recon share colour limits; pixels outside the region are grey.
    """
    p = align_pair(recon, truth, weight, plane_fit, weight_threshold, erode_px)

    def masked(x: np.ndarray) -> np.ndarray:
        return np.where(p.mask, x, np.nan)

    def show(ax: Any, img: np.ndarray, title: str, cmap: str, label: str, lim: tuple[float, float]) -> None:
        _show(fig, ax, img, title, cmap, label, lim, origin=(p.bbox[0], p.bbox[2]))

    fig, ax = _figure(2, 3, size=(14, 8.5))
    amp_lim = _limits(masked(p.truth_amp))
    show(ax[0, 0], masked(p.truth_amp), "truth amplitude", "gray", "amplitude (unitless)", amp_lim)
    show(ax[0, 1], masked(p.recon_amp), f"recon amplitude (x{p.amplitude_scale:.3g})", "gray",
          "amplitude (unitless)", amp_lim)
    d_amp = masked(p.recon_amp - p.truth_amp)
    m = float(np.nanmax(np.abs(d_amp))) or 1.0
    show(ax[0, 2], d_amp, "amplitude difference", "RdBu_r", "recon - truth (unitless)", (-m, m))
    ph_lim = _limits(masked(p.truth_phase))
    show(ax[1, 0], masked(p.truth_phase), "truth phase", "viridis", "phase (rad)", ph_lim)
    show(ax[1, 1], masked(p.recon_phase), f"recon phase (offset {p.phase_offset_rad:+.2f} rad"
          + (", ramp removed)" if plane_fit else ")"), "viridis", "phase (rad)", ph_lim)
    d_ph = masked(p.recon_phase - p.truth_phase)
    m = float(np.nanmax(np.abs(d_ph))) or 1.0
    show(ax[1, 2], d_ph, "phase difference (wrapped)", "RdBu_r", "recon - truth (rad)", (-m, m))
    fig.suptitle(f"reconstruction vs ground truth ({int(p.mask.sum())} px in the scanned region)")
    return _save(fig, path)


def save_frc_plot(frc_result: Mapping[str, Any], path: str | Path, title: str = "Fourier ring correlation") -> Path:
    """FRC curve (from `metrics.frc`) against frequency (cycles/px) with the 0.5 and 1/7 thresholds;
    when the result carries `pixel_size_m` (metrics.resolution_in_nm), the resolutions read in nm too
    and a top axis gives the frequency in 1/um."""
    freq = np.asarray(frc_result["freq"], dtype=float)
    curve = np.asarray(frc_result["curve"], dtype=float)
    pixel_m = frc_result.get("pixel_size_m")

    def period(px: float) -> str:
        return f"{px:.1f} px" + (f" = {px * pixel_m * 1e9:.0f} nm" if pixel_m else "")

    fig, ax = _figure(size=(6.5, 4.5))
    a = ax[0, 0]
    a.plot(freq, curve, color="C0", lw=1.5, label="FRC")
    for thr, key, color, name in ((FRC_HALF, "half", "C1", "0.5"), (FRC_17, "17", "C2", "1/7")):
        a.axhline(thr, color=color, ls="--", lw=1, label=f"threshold {name}")
        f = frc_result.get(f"threshold_{key}")
        if f is not None and frc_result.get(f"crossed_{key}", True):
            a.axvline(f, color=color, ls=":", lw=1,
                      label=f"{name}: {f:.3f} cycles/px ({period(1 / f)})")
        elif f is not None:
            a.plot([], [], " ", label=f"{name}: not reached (resolution <= {period(1 / f)})")
    if "threshold_halfbit" in frc_result:  # a half-scan FRC: the half-bit curve and its crossing
        halfbit = np.asarray(frc_result["threshold_halfbit"], dtype=float)[: len(freq)]
        a.plot(freq[: len(halfbit)], halfbit, color="C3", ls="--", lw=1, label="half-bit threshold")
        a.axvline(1 / frc_result["resolution_halfbit_px"], color="C3", ls=":", lw=1,
                  label=f"half-bit: {period(frc_result['resolution_halfbit_px'])}")
    if pixel_m:  # cycles/px -> cycles/um
        per_um = 1.0 / (pixel_m * 1e6)
        top = a.secondary_xaxis("top", functions=(lambda f: f * per_um, lambda g: g / per_um))
        top.set_xlabel(f"spatial frequency (1/um; object pixel {pixel_m * 1e9:.3g} nm)")
    a.set_xlim(0, max(0.5, float(freq.max()) if freq.size else 0.5))
    a.set_ylim(min(-0.1, float(np.nanmin(curve)) if curve.size else 0.0), 1.05)
    a.set_xlabel("spatial frequency (cycles/pixel)")
    a.set_ylabel("correlation")
    a.set_title(title)
    a.grid(alpha=0.3)
    a.legend(fontsize="small", loc="lower left")
    return _save(fig, path)


def _rows_from(metrics: str | Path | Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]
               ) -> list[dict[str, float]]:
    """Rows {column: float} from a metrics.csv path, a column dict, or a list of row dicts."""
    def num(v: Any) -> float:
        try:
            return float(v) if v not in ("", None) else math.nan
        except (TypeError, ValueError):
            return math.nan

    if isinstance(metrics, (str, Path)):
        with open(metrics, newline="") as fh:
            return [{k: num(v) for k, v in row.items() if k is not None} for row in csv.DictReader(fh)]
    if isinstance(metrics, Mapping):
        cols = {k: list(v) for k, v in metrics.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"metric columns have different lengths: { {k: len(v) for k, v in cols.items()} }")
        n = lengths.pop() if lengths else 0
        return [{k: num(v[i]) for k, v in cols.items()} for i in range(n)]
    return [{k: num(v) for k, v in row.items()} for row in metrics]


def save_loss_curves(metrics: str | Path | Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
                     path: str | Path, title: str = "training loss", truth_loss: float | None = None) -> Path:
    """Per-epoch train/val loss from a Lightning CSVLogger metrics.csv (path), a dict of columns, or
    a list of row dicts (e.g. the History callback's rows).

    Rows are sparse (NaN/empty where a metric was not logged); for each of train_loss, val_loss (and
    their *_epoch variants) the last logged value of each epoch is plotted. Without an `epoch`
    column, rows are taken as consecutive epochs. The y axis is logarithmic when every value is > 0.
    With `truth_loss` (the loss of the ground truth, ptycho_torch.evaluation.truth_loss) the curves are drawn as
    multiples of it, with the truth itself (the noise floor) as a dashed line at 1.
    """
    from matplotlib.ticker import MaxNLocator

    rows = _rows_from(metrics)
    columns = sorted({k for r in rows for k in r})
    series: dict[str, dict[float, float]] = {}
    for i, row in enumerate(rows):
        epoch = row.get("epoch", math.nan)
        epoch = float(i) if math.isnan(epoch) and "epoch" not in columns else epoch
        if math.isnan(epoch):
            continue
        for col in LOSS_COLUMNS:
            v = row.get(col, math.nan)
            if not math.isnan(v):
                series.setdefault(col, {})[epoch] = v
    if not series:
        raise ValueError(f"no loss values to plot: expected columns {LOSS_COLUMNS} with an epoch; got {columns}")
    fig, ax = _figure(size=(6.5, 4.5))
    a = ax[0, 0]
    every: list[float] = []
    for col in (c for c in LOSS_COLUMNS if c in series):
        by_epoch = series[col]
        epochs = sorted(by_epoch)
        vals = [by_epoch[e] / (truth_loss or 1.0) for e in epochs]
        every += vals
        a.plot(epochs, vals, marker="o" if len(epochs) < 30 else None, ms=3, label=col)
    if truth_loss:
        a.axhline(1.0, color="k", ls="--", lw=1, label="loss of the truth (noise floor)")
        every.append(1.0)
    if min(every) > 0:
        a.set_yscale("log")
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.set_xlabel("epoch")
    a.set_ylabel(("loss / loss of the truth" if truth_loss else "loss") + (" (log scale)" if min(every) > 0 else ""))
    a.set_title(title)
    a.grid(alpha=0.3, which="both")
    a.legend()
    return _save(fig, path)


def save_trial_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                      metric_name: str, title: str | None = None) -> Path:
    """One line per sweep trial: curves maps trial name -> (epochs, values) of `metric_name`.

    NaN values are skipped; the y axis is logarithmic when every value is > 0; the legend is shown
    for up to 20 trials.
    """
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(size=(7.5, 4.8))
    a = ax[0, 0]
    every: list[float] = []
    for name, (epochs, values) in curves.items():
        e, v = np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)
        if e.shape != v.shape:
            raise ValueError(f"trial {name!r}: {e.size} epochs but {v.size} values")
        ok = np.isfinite(v) & np.isfinite(e)
        every += v[ok].tolist()
        a.plot(e[ok], v[ok], lw=1.2, marker="o" if ok.sum() < 30 else None, ms=3, label=str(name))
    if every and min(every) > 0:
        a.set_yscale("log")
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.set_xlabel("epoch")
    a.set_ylabel(metric_name)
    a.set_title(title or f"{metric_name} per trial ({len(curves)} trials)")
    a.grid(alpha=0.3, which="both")
    if 0 < len(curves) <= 20:
        a.legend(fontsize="small", ncols=2 if len(curves) > 8 else 1)
    return _save(fig, path)


def save_fit_map(positions: np.ndarray, pattern_ratio: np.ndarray, ratio: float, path: str | Path,
                 title: str = "data fit") -> Path:
    """Each fitted pattern's deviance / noise floor (K,) at its scan position (K, 2) (x, y px) on a
    log colour scale (ptycho_torch.evaluation.data_fit): 1 = explained to the counting noise, the bright spots
    are where the object fails. `ratio` is the whole scan's, for the title."""
    from matplotlib.colors import LogNorm

    xy = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    values = np.maximum(np.asarray(pattern_ratio, dtype=np.float64), 1e-3)
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    lo, hi = min(lo, 1.0), max(hi, lo * 1.01, 1.01)
    fig, axes = _figure()
    ax = axes[0, 0]
    dots = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=max(6.0, min(60.0, 12000.0 / max(len(values), 1))), cmap="magma",
                      norm=LogNorm(vmin=lo, vmax=hi))
    ax.set_aspect("equal")
    ax.invert_yaxis()  # rows grow downwards, as in the object images
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title(f"{title}: deviance {ratio:.2f}x the noise floor ({len(values)} patterns)", fontsize=9)
    fig.colorbar(dots, ax=ax, label="deviance / noise floor per pattern")
    return _save(fig, path)


def save_probe(probe: np.ndarray, path: str | Path, pixel_size_m: float | None = None) -> Path:
    """Amplitude and phase of every probe mode (K, N, N) complex, one column per mode, titled with
    its share of the total power; the phase shown where the amplitude is above 5% of its maximum."""
    probe = np.asarray(probe)
    probe = probe.reshape(-1, *probe.shape[-2:])
    K = len(probe)
    power = np.sum(np.abs(probe) ** 2, axis=(-2, -1))
    share = power / max(float(power.sum()), 1e-30)
    fig, ax = _figure(2, K, size=(4.2 * K, 7.5))
    for k in range(K):
        amp = np.abs(probe[k])
        phase = np.where(amp > 0.05 * amp.max(), np.angle(probe[k]), np.nan)
        _show(fig, ax[0, k], amp, f"probe mode {k}: amplitude ({100 * share[k]:.1f}% of the power)", "magma",
              "amplitude (sqrt photons)", pixel_size_m=pixel_size_m)
        _show(fig, ax[1, k], phase, f"probe mode {k}: phase", "twilight", "phase (rad)", (-math.pi, math.pi),
              pixel_size_m=pixel_size_m)
    return _save(fig, path)


def save_solver_errors(errors: Sequence[float], path: str | Path) -> Path:
    """The iterative solver's amplitude error per epoch (log scale)."""
    fig, ax = _figure()
    a = ax[0, 0]
    a.semilogy(np.arange(1, len(errors) + 1), errors, marker="." if len(errors) < 50 else None)
    a.set_xlabel("epoch")
    a.set_ylabel("sum | |Psi| - X | / sum X")
    a.set_title("iterative reconstruction: amplitude error")
    a.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def save_weight_map(weight: np.ndarray, path: str | Path, title: str = "coverage",
                    pixel_size_m: float | None = None) -> Path:
    """The stitching weight sum (H, W) of a reconstruction: where the scan has looked so far and how often
    (0 shown grey)."""
    fig, ax = _figure()
    shown = np.where(weight > 0, weight, np.nan).astype(np.float32)
    _show(fig, ax[0, 0], shown, title, "viridis", "weight sum (probe intensity, relative)",
          limits=(0.0, float(np.nanmax(shown)) if np.isfinite(shown).any() else 1.0), pixel_size_m=pixel_size_m)
    return _save(fig, path)
