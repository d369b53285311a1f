"""Submission formats as data: each preset is a YAML file in formats/ beside this module.

A format says what Kaggle expects of a submission CSV:

    columns   the header: [id column, value column]
    id        the id template: {name} (file name with extension) or {stem}, then {box}, {row},
              {col}, {channel} (box may be left out when coords is image)
    coords    box: row/col inside the box (0..box_size-1); image: row/col in the image
    box_base  the first box's number (0 or 1), boxes in bbox CSV order
    channels  rgb: channel 0 is red; bgr: channel 0 is blue
    values    integer: 0..255; decimal: pixel / 255 on 0..1 written with `digits` decimals

The competition's format is the layout's preset (data.format: auto), a preset named in the
config, or a YAML file; data.channels and data.values override the preset's; a sample submission
fixes the header, and the range of its values decides `values` unless data.values is set.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError, read_yaml

PRESETS_DIR = Path(__file__).resolve().parent / "formats"
LAYOUT_PRESETS = {"photo-reconstruction": "photo-reconstruction", "generic": "default"}
ID_FIELDS = ("name", "stem", "box", "row", "col", "channel")


@dataclass(frozen=True)
class SubmissionFormat:
    name: str
    columns: tuple[str, str]
    id: str
    coords: str = "box"
    box_base: int = 0
    channels: str = "rgb"
    values: str = "integer"
    digits: int = 4

    @property
    def pieces(self) -> list[tuple[str, str | None]]:
        """The id template as (literal text, field or None) pairs, in order."""
        return [(literal, fieldname) for literal, fieldname, _, _ in string.Formatter().parse(self.id)]

    @property
    def image_field(self) -> str:
        return "name" if "{name}" in self.id else "stem"

    @property
    def value_range(self) -> tuple[float, float]:
        return (0.0, 1.0) if self.values == "decimal" else (0.0, 255.0)

    def value_texts(self) -> list[str]:
        """The text written for each pixel value 0..255."""
        if self.values == "decimal":
            return [f"{v / 255:.{self.digits}f}" for v in range(256)]
        return [str(v) for v in range(256)]

    def to_file_channels(self, rgb: np.ndarray) -> np.ndarray:
        """Pixels (..., 3) RGB in the file's channel order."""
        return rgb[..., ::-1] if self.channels == "bgr" else rgb

    def describe(self) -> str:
        return (f"{self.name}: {','.join(self.columns)}; ids {self.id} ({self.coords} coordinates, boxes from "
                f"{self.box_base}); channel 0 = {'red' if self.channels == 'rgb' else 'blue'}; values "
                + ("pixel/255 on 0..1" if self.values == "decimal" else "integers 0..255"))


def _check(fmt: SubmissionFormat, where: str) -> SubmissionFormat:
    if not (isinstance(fmt.columns, (list, tuple)) and len(fmt.columns) == 2 and all(isinstance(c, str) and c for c in fmt.columns)):
        raise ConfigError(f"{where}: columns: expected two column names, got {fmt.columns!r}")
    fields = [f for _, f in fmt.pieces if f is not None]
    unknown = sorted(set(fields) - set(ID_FIELDS))
    if unknown or len(fields) != len(set(fields)):
        raise ConfigError(f"{where}: id {fmt.id!r}: fields must be distinct of {', '.join('{' + f + '}' for f in ID_FIELDS)}")
    needed = {"row", "col", "channel"} | ({"box"} if fmt.coords == "box" else set())
    if (("name" in fields) == ("stem" in fields)) or not needed <= set(fields):
        raise ConfigError(f"{where}: id {fmt.id!r} needs {{name}} or {{stem}} (one of them) and "
                          f"{', '.join('{' + f + '}' for f in sorted(needed))}")
    for key, allowed in (("coords", ("box", "image")), ("channels", ("rgb", "bgr")), ("values", ("integer", "decimal"))):
        if getattr(fmt, key) not in allowed:
            raise ConfigError(f"{where}: {key}: {getattr(fmt, key)!r} is not one of {', '.join(allowed)}")
    if fmt.box_base not in (0, 1) or not isinstance(fmt.digits, int) or not 1 <= fmt.digits <= 8:
        raise ConfigError(f"{where}: box_base must be 0 or 1 and digits 1..8")
    return dataclasses.replace(fmt, columns=tuple(fmt.columns))


def load_format(name_or_path: str) -> SubmissionFormat:
    """A preset by name (pipeline/submission/formats/<name>.yaml) or a format YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = PRESETS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
            raise ConfigError(f"data.format: {name_or_path!r} is neither a preset ({presets}) nor a format YAML file")
    raw = read_yaml(path)
    known = {f.name for f in dataclasses.fields(SubmissionFormat)} - {"name"}
    unknown = sorted(set(raw) - known) if isinstance(raw, dict) else []
    if not isinstance(raw, dict) or unknown or not {"columns", "id"} <= set(raw):
        raise ConfigError(f"{path}: a format needs columns and id, and knows only {', '.join(sorted(known))}"
                          + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return _check(SubmissionFormat(name=path.stem, **raw), str(path))


def competition_format(competition, sample_values: str | None = None) -> SubmissionFormat:
    """The format of `competition`'s submission: its data config over its layout's preset.

    sample_values: `decimal`/`integer` as read from the sample submission's values (the caller
    reads them; None when there is none or it cannot tell).
    """
    cfg = competition.config
    fmt = load_format(LAYOUT_PRESETS[competition.layout] if cfg.format == "auto" else cfg.format)
    changes = {}
    if cfg.channels:
        changes["channels"] = cfg.channels
    if cfg.values:
        changes["values"] = cfg.values
    elif sample_values:
        changes["values"] = sample_values
    return dataclasses.replace(fmt, **changes)
