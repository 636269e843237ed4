"""Roles of a beamline scan kept in another file: another HDF5 file, a text table of positions, a
Ptychodus product. `beamline.read_beamline` asks `OtherFiles.read` for a `data.datasets` value that
names a file (the frames always stay in the scan file, read lazily; everything read here is small and
read whole, and every file opened is closed when the scan has been read).

Value forms of `data.datasets.ROLE` (a relative FILE is taken from the scan file's folder, `~` expanded):

    OTHER.h5::/path/in/other    that file's dataset, for any role but frames; lengths in metres unless
                                a `units` attribute says mm, um, nm, ... (as in the scan file)
    positions.csv[::OPTIONS]    a text table of scan positions (.csv, .txt, .dat, .tsv), for the roles
                                translation, x, y (lengths) and xcoords, ycoords (object pixels)
    product.h5                  a Ptychodus product: root datasets probe_position_x_m and
                                probe_position_y_m (metres), for translation, x and y

Text tables: one row per frame, in frame order; columns split by commas, semicolons, tabs or spaces;
lines starting with '#' are comments. The line right before the first row of numbers (a '#' comment
or not) is the header when it has as many fields as the rows: it names the columns, a name may carry
its unit (`x_um`, `x[um]`, `x (um)`). x is the column named `x` (any case), else the one column with
an `x` part in its name (`Average_x_st_fzp`); y likewise; without a header, columns 1 and 2 of a 2- or
3-column table. Other columns are ignored. OPTIONS (separated by spaces or commas) override that:
`x=COLUMN y=COLUMN` (a header name or a column number counted from 1) and `units=UNIT` (or just
`UNIT`), e.g. `positions.dat::x=Average_x_st_fzp y=Average_y_st_fzp units=um`.

Units of a column, first found: its header name's unit, a `# units: UNIT` line before the data, the
spec's `units=`; a unit in the spec and one in the file must agree. Without any: metres for
translation / x / y, object pixels for xcoords / ycoords. Units: m, mm, um, nm, pm, cm, angstrom
(lengths) and px (object pixels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.data.detector import LENGTH_UNITS, to_metres
from ptycho_torch.data.validation import H5_SUFFIXES

TEXT_SUFFIXES = (".csv", ".txt", ".dat", ".tsv")
PIXEL_UNITS = ("px", "pixel", "pixels")
POSITION_ROLES = ("translation", "x", "y", "xcoords", "ycoords")
ACCEPTED_UNITS = ", ".join(LENGTH_UNITS) + " (lengths), " + ", ".join(PIXEL_UNITS) + " (object pixels)"
_UNITS_LINE = re.compile(r"units?\s*[:=]\s*(\S+)$", re.IGNORECASE)
_BRACKETED = re.compile(r"(.+?)\s*[\[(]\s*([^\])]+?)\s*[\])]")


def names_a_file(head: str, inner: str | None) -> bool:
    """Whether a data.datasets value (split at '::' into head, inner) names another file: it has a
    '::', or its head ends in a text or HDF5 suffix."""
    return inner is not None or Path(head).suffix.lower() in TEXT_SUFFIXES + H5_SUFFIXES


@dataclass(eq=False)
class LoadedArray:
    """A role's values read whole from another file, seen as beamline.py sees an h5py dataset:
    `name` (the file and where in it, for messages and metadata), `attrs`, `shape`, `ndim`, `[()]`."""

    name: str
    value: np.ndarray
    attrs: dict[str, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def ndim(self) -> int:
        return self.value.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype

    def __getitem__(self, key: Any) -> Any:
        return self.value[key]


@dataclass(eq=False)
class PositionTable:
    """The x and y columns of a positions file: values (M,) as stored, their units (None = not said)."""

    source: str
    x: np.ndarray
    y: np.ndarray
    x_label: str
    y_label: str
    x_unit: str | None
    y_unit: str | None


class OtherFiles:
    """The other files of one scan's read: open HDF5 handles and parsed tables cached until `close`.
    `read` returns a LoadedArray, or one problem line naming the file and the fix."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._h5: dict[Path, Any] = {}
        self._tables: dict[tuple[Path, str | None], PositionTable | str] = {}

    def close(self) -> None:
        """Close every HDF5 file opened (the tables read stay cached)."""
        for f in self._h5.values():
            f.close()
        self._h5.clear()

    def resolve(self, head: str) -> Path:
        """A data.datasets file: `~` expanded, a relative path taken from the scan file's folder."""
        p = Path(head).expanduser()
        return p if p.is_absolute() else self.base / p

    def read(self, role: str, head: str, inner: str | None) -> LoadedArray | str:
        """data.datasets.`role` = 'head[::inner]' read from its file (see the module doc)."""
        p = self.resolve(head)
        given = head if inner is None else f"{head}::{inner}"
        if role == "frames":
            return (f"frames: data.datasets.frames = {given} names another file; frames are read from the scan file "
                    f"itself: give --data {head}::/path/to/frames, and the other roles as FIRST.h5::/path")
        if not p.is_file():
            return (f"{role}: {p} does not exist (data.datasets.{role} = {given}; a relative path starts at the "
                    f"scan file's folder {self.base})")
        text = p.suffix.lower() in TEXT_SUFFIXES
        if inner is not None and not text:
            return self._dataset(role, p, inner)
        table = self._tables.get((p, inner))
        if table is None:
            table = self._tables[(p, inner)] = read_text_table(p, inner) if text else self._product(p, given)
        return table if isinstance(table, str) else role_of_table(role, table)

    def _open(self, p: Path) -> Any:
        if p not in self._h5:
            import h5py

            self._h5[p] = h5py.File(p, "r")
        return self._h5[p]

    def _dataset(self, role: str, p: Path, inner: str) -> LoadedArray | str:
        try:
            obj = self._open(p).get(inner)
        except OSError as e:
            return f"{role}: {p} could not be opened as HDF5 ({e}); data.datasets.{role} needs FILE.h5::/dataset"
        if obj is None or not hasattr(obj, "dtype"):
            what = "a group, not a dataset" if obj is not None else f"no dataset {inner}"
            return f"{role}: {p} has {what}; check the path after '::' in data.datasets.{role}"
        return LoadedArray(f"{p}::{obj.name}", np.asarray(obj[()]), dict(obj.attrs))

    def _product(self, p: Path, given: str) -> PositionTable | str:
        """A Ptychodus product's positions (ptycho_torch.data.ptychodus_files): metres, or object pixels
        (xcoords / ycoords as Ptychodus maps them) for a product this project wrote without a pixel size."""
        from ptycho_torch.data.ptychodus_files import is_product, read_product
        from ptycho_torch.errors import UserError

        if not is_product(p):
            return (f"positions: {p} is not a Ptychodus product (no root datasets object, probe, "
                    f"probe_position_x_m, probe_position_y_m); name the dataset: {given}::/path/to/positions")
        try:
            product = read_product(p, with_object=False)
        except UserError as e:
            return f"positions: {e}"
        if product.pixel_size_m is None:  # object pixels: the mapping needs the object's shape
            product = read_product(p)
            return PositionTable(str(p), product.xcoords, product.ycoords, "xcoords", "ycoords", "px", "px")
        return PositionTable(str(p), product.position_x, product.position_y, "probe_position_x_m",
                             "probe_position_y_m", "m", "m")


def role_of_table(role: str, t: PositionTable) -> LoadedArray | str:
    """A position role (translation (M, 2) / x / y in metres, xcoords / ycoords in object pixels) of a
    table, or one problem line."""
    if role not in POSITION_ROLES:
        return (f"{role}: {t.source} is a table of scan positions, not a {role}; give data.datasets.{role} as "
                "a dataset path (or OTHER.h5::/dataset)")
    pixels = role in ("xcoords", "ycoords")
    if len(t.x) != len(t.y):
        return f"positions: {t.source} holds {len(t.x)} x and {len(t.y)} y values; give one (x, y) per frame"
    x, y = (t.x, t.x_label, t.x_unit), (t.y, t.y_label, t.y_unit)
    cols = [x, y] if role == "translation" else [y] if role.startswith("y") else [x]
    out = []
    for values, label, unit in cols:
        is_px = unit is not None and unit.lower() in PIXEL_UNITS
        if pixels and unit is not None and not is_px:
            return (f"{role}: column {label} of {t.source} holds lengths ({unit}), not object pixels; give the file "
                    "as data.datasets.translation (or x and y)")
        if not pixels and is_px:
            return (f"{role}: column {label} of {t.source} holds object pixels; give the file as "
                    "data.datasets.xcoords and ycoords")
        out.append(values if pixels or unit is None else to_metres(values, unit))
    name = t.source if role == "translation" else f"{t.source} column {cols[0][1]}"
    return LoadedArray(name, np.stack(out, axis=1) if role == "translation" else out[0], {})


# ------------------------------------------------------------------ text tables

def _fields(line: str) -> list[str]:
    """A line's fields: split at commas, else semicolons, else tabs, else spaces ('x (um) y (um)' -> two)."""
    for sep in (",", ";", "\t"):
        if sep in line:
            return [s.strip() for s in line.split(sep)]
    return re.sub(r"\s+(?=[\[(])", "", line).split()


def _numbers(fields: list[str]) -> list[float] | None:
    try:
        return [float(s) for s in fields]
    except ValueError:
        return None


def _unit_scale(unit: str) -> float | str | None:
    """A unit's metres per unit, 'px' for object pixels, None when unknown."""
    u = unit.strip().lower()
    return "px" if u in PIXEL_UNITS else LENGTH_UNITS.get(u)


def _unit_known(unit: str) -> bool:
    return _unit_scale(unit) is not None


def _label(field: str) -> tuple[str, str, str | None]:
    """A header field -> (field, name, unit or None): 'x[um]', 'x (um)', 'x_um' -> (field, 'x', 'um')."""
    m = _BRACKETED.fullmatch(field)
    if m:
        return field, m[1], m[2]
    head, sep, tail = field.rpartition("_")
    return (field, head, tail) if sep and head and _unit_known(tail) else (field, field, None)


def _options(spec: str | None) -> dict[str, str] | str:
    """'x=A y=B units=um' (spaces or commas) -> {'x': 'A', 'y': 'B', 'units': 'um'}; a bare word is the unit."""
    out: dict[str, str] = {}
    for word in re.split(r"[\s,;]+", (spec or "").strip()):
        key, sep, value = word.partition("=")
        key = key.strip().lower() if sep else "units"
        if key == "unit":
            key = "units"
        if key not in ("x", "y", "units") or (sep and not value):
            return f"unknown option '{word}'; options are x=COLUMN y=COLUMN units=UNIT"
        if word:
            out[key] = value if sep else word
    return out


def read_text_table(path: Path, spec: str | None = None) -> PositionTable | str:
    """The x / y columns of a text table of positions (module doc), or one problem line.
    `spec`: the OPTIONS after '::' (x=COLUMN y=COLUMN units=UNIT), or None."""
    where = f"positions: {path}"
    options = _options(spec)
    if isinstance(options, str):
        return f"{where}: {options}"
    rows: list[list[float]] = []
    before: list[str] = []
    file_unit: str | None = None
    for n, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.strip()
        comment = line.startswith("#")
        body = line.lstrip("#").strip()
        if not body or (comment and rows):
            continue
        units = _UNITS_LINE.match(body)
        if units and not rows:
            file_unit = units[1]
            continue
        values = None if comment else _numbers(_fields(body))
        if values is None:
            if rows:
                return f"{where}: line {n} is not a row of numbers ({line[:40]!r}); one row of numbers per frame"
            before.append(body)
            continue
        if rows and len(values) != len(rows[0]):
            return f"{where}: line {n} has {len(values)} columns, the rows before it {len(rows[0])}; fix that row"
        rows.append(values)
    if not rows:
        return f"{where}: no rows of numbers; one row (x, y) per frame"
    table = np.asarray(rows, np.float64)
    header = _fields(before[-1]) if before else []
    labels = [_label(f) for f in header] if len(header) == table.shape[1] else []
    picked: list[int] = []
    for axis in ("x", "y"):
        k = _column(axis, options.get(axis), labels, table.shape[1], path.name)
        if isinstance(k, str):
            return f"{where}: {k}"
        picked.append(k)
    units = []
    for k in picked:
        unit = (labels[k][2] if labels else None) or file_unit
        given = options.get("units")
        for u in (unit, given):
            if u is not None and not _unit_known(u):
                return f"{where}: unknown unit '{u}'; use one of {ACCEPTED_UNITS}"
        if unit is not None and given is not None and _unit_scale(unit) != _unit_scale(given):
            return f"{where} says its unit is {unit}, its data.datasets value says units={given}; drop one"
        units.append(unit or given)
    names = [labels[k][0] if labels else f"{k + 1}" for k in picked]
    return PositionTable(str(path), table[:, picked[0]], table[:, picked[1]], names[0], names[1], units[0], units[1])


def _column(axis: str, chosen: str | None, labels: list[tuple[str, str, str | None]], ncols: int,
            file: str) -> int | str:
    """The 0-based column of `axis`: as chosen (a header field, its name without the unit, or a column
    number counted from 1), else found by the header."""
    fix = f"name the columns: {file}::x=COLUMN y=COLUMN (a header name or a column number from 1)"
    fields = ", ".join(f for f, _, _ in labels) or f"{ncols}, no header"
    if chosen is not None:
        if chosen.isdigit() and 1 <= int(chosen) <= ncols:
            return int(chosen) - 1
        hits = [k for k, (f, name, _) in enumerate(labels) if chosen.lower() in (f.lower(), name.lower())]
        return hits[0] if hits else f"no column '{chosen}' for {axis} (columns: {fields}); {fix}"
    if not labels:
        return {"x": 0, "y": 1}[axis] if ncols in (2, 3) else f"{ncols} columns and no header naming x and y; {fix}"
    names = [name.strip().lower() for _, name, _ in labels]
    hits = ([k for k, name in enumerate(names) if name == axis]
            or [k for k, name in enumerate(names) if axis in re.split(r"[\s_.\-]+", name)])
    if len(hits) != 1:
        found = ", ".join(labels[k][0] for k in hits) if hits else "none"
        return f"which column is {axis}? the header ({fields}) gives {found}; {fix}"
    return hits[0]
