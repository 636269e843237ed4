"""Where the roles of a NeXus file live, found by following NX_class attributes (no fixed paths).

    entry           the root's `default` NXentry, else the first NXentry
    frames          the entry's `default` NXdata (else its first NXdata), dataset named by its `signal`
                    attribute (else the dataset with attribute signal=1, else `data`)
    x, y            NXdata axes of length M (the `axes` attribute, names x/y-like), else in NXsample:
                    NXpositioner groups (their `value`) or datasets (also inside NXtransformations)
                    named x / y / sample_x / sample_y / translation_x ...; metres unless `units` says
    energy          NXsource `energy`, NXmonochromator `energy`, or NXbeam `incident_energy` (units attr);
                    without one, NXbeam `incident_wavelength` / NXmonochromator `wavelength` (NXptycho)
    distance        NXdetector `distance`
    detector_pixel  NXdetector `x_pixel_size` (and `y_pixel_size`)
    probe           a dataset named `probe` or `illumination` anywhere under the entry (optional)
    mask            NXdetector `pixel_mask` (nonzero = excluded pixel, the NeXus convention) (optional)

NXptycho files (the NeXus ptychography application definition) follow this layout: frames in the
NXdata of the entry, positions as NXdata axes or NXsample transformations, geometry in NXinstrument.
"""

from __future__ import annotations

from typing import Any, Iterator

X_NAMES = ("x", "sample_x", "translation_x", "x_translation", "samx", "x_position", "position_x")
Y_NAMES = ("y", "sample_y", "translation_y", "y_translation", "samy", "y_position", "position_y")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "reshape") and getattr(value, "size", 1) >= 1 and getattr(value, "ndim", 0) > 0:
        value = value.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def nx_class(obj: Any) -> str | None:
    return _text(obj.attrs.get("NX_class"))


def _groups(group: Any, cls: str) -> Iterator[Any]:
    """Direct member groups of `group` of NX_class `cls`, in name order."""
    for name in sorted(group):
        item = group.get(name)
        if item is not None and not hasattr(item, "dtype") and nx_class(item) == cls:
            yield item


def _walk(group: Any, cls: str) -> Iterator[Any]:
    """Groups of class `cls` anywhere below `group`, breadth first."""
    level = [group]
    while level:
        nxt = []
        for g in level:
            for name in sorted(g):
                item = g.get(name)
                if item is None or hasattr(item, "dtype"):
                    continue
                if nx_class(item) == cls:
                    yield item
                nxt.append(item)
        level = nxt


def is_nexus(f: Any) -> bool:
    return next(_groups(f, "NXentry"), None) is not None


def _entry(f: Any) -> Any:
    default = _text(f.attrs.get("default"))
    if default and default in f and nx_class(f[default]) == "NXentry":
        return f[default]
    return next(_groups(f, "NXentry"))


def _nxdata(entry: Any) -> Any | None:
    default = _text(entry.attrs.get("default"))
    if default and default in entry and nx_class(entry[default]) == "NXdata":
        return entry[default]
    return next(_groups(entry, "NXdata"), None) or next(_walk(entry, "NXdata"), None)


def _signal(data: Any) -> str | None:
    name = _text(data.attrs.get("signal"))
    if name and name in data:
        return data[name].name
    for key in sorted(data):
        item = data.get(key)
        if hasattr(item, "dtype") and _text(item.attrs.get("signal")) in ("1", "true", "True"):
            return item.name
    return data["data"].name if "data" in data and hasattr(data["data"], "dtype") else None


def _axes(data: Any, frames_len: int | None) -> tuple[list[str], list[str]]:
    """Candidate x / y dataset paths among the NXdata axes (1-D, length M)."""
    raw = data.attrs.get("axes")
    names = [_text(a) for a in (raw if hasattr(raw, "__len__") and not isinstance(raw, (str, bytes)) else [raw])
             ] if raw is not None else []
    names = [n for n in names if n and n != "." and n in data]
    names += [n for n in sorted(data) if n not in names]
    xs, ys = [], []
    for n in names:
        item = data.get(n)
        if not hasattr(item, "dtype") or item.ndim != 1 or (frames_len is not None and item.shape[0] != frames_len):
            continue
        low = n.lower()
        if low in X_NAMES:
            xs.append(item.name)
        elif low in Y_NAMES:
            ys.append(item.name)
    return xs, ys


def _sample_positions(entry: Any) -> tuple[list[str], list[str]]:
    """x / y candidates in NXsample: NXpositioner `value`s and x/y-named datasets (NXtransformations too)."""
    xs, ys = [], []
    for sample in _walk(entry, "NXsample"):
        holders = [sample, *_walk(sample, "NXtransformations")]
        for pos in _walk(sample, "NXpositioner"):
            name = (_text(pos["name"][()]) if "name" in pos else pos.name.rsplit("/", 1)[-1]).lower()
            if "value" in pos:
                (xs if name in X_NAMES else ys if name in Y_NAMES else []).append(pos["value"].name)
        for holder in holders:
            for key in sorted(holder):
                item = holder.get(key)
                if hasattr(item, "dtype") and item.ndim == 1:
                    low = key.lower()
                    (xs if low in X_NAMES else ys if low in Y_NAMES else []).append(item.name)
    return xs, ys


def _fields(entry: Any, cls: str, names: tuple[str, ...]) -> list[str]:
    return [g[n].name for g in _walk(entry, cls) for n in names if n in g and hasattr(g[n], "dtype")]


def nexus_roles(f: Any) -> dict[str, list[str]]:
    """Candidate dataset paths of each role found through the NX_class attributes."""
    entry = _entry(f)
    data = _nxdata(entry)
    roles: dict[str, list[str]] = {}
    frames = _signal(data) if data is not None else None
    roles["frames"] = [frames] if frames else []
    M = int(f[frames].shape[0]) if frames and f[frames].ndim >= 1 else None
    ax_x, ax_y = _axes(data, M) if data is not None else ([], [])
    s_x, s_y = _sample_positions(entry)
    roles["x"], roles["y"] = ax_x + s_x, ax_y + s_y
    roles["energy"] = (_fields(entry, "NXsource", ("energy",)) + _fields(entry, "NXmonochromator", ("energy",))
                       + _fields(entry, "NXbeam", ("incident_energy", "energy")))
    roles["wavelength"] = (_fields(entry, "NXbeam", ("incident_wavelength", "wavelength"))
                           + _fields(entry, "NXmonochromator", ("wavelength",)))
    roles["distance"] = _fields(entry, "NXdetector", ("distance",))
    roles["detector_pixel"] = _fields(entry, "NXdetector", ("x_pixel_size",))
    roles["detector_pixel_y"] = _fields(entry, "NXdetector", ("y_pixel_size",))
    roles["mask"] = _fields(entry, "NXdetector", ("pixel_mask",))
    probes: list[str] = []
    entry.visititems(lambda name, obj: probes.append(obj.name) if hasattr(obj, "dtype")
                     and name.rsplit("/", 1)[-1] in ("probe", "illumination") else None)
    roles["probe"] = probes
    return roles
