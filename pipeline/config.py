"""Typed configuration: one YAML file per variant under configs/, loaded into dataclasses.

A variant file names the inpainting `method` and its `params`; the `data` block describes the
competition (box size and count, validation split). The variant's `name` is what the leaderboard
shows. Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
# configs/ of a checkout; an installed package (`pip install .`) carries them as pipeline/configs/
CONFIG_DIR = REPO_ROOT / "configs" if (REPO_ROOT / "configs").is_dir() else Path(__file__).resolve().parent / "configs"
VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # it names files: submissions/<name>.csv


class PipelineError(Exception):
    """An error a person can act on: the CLI prints its message (no traceback) and exits 2."""


class DiskFullError(PipelineError, OSError):
    """No space left on the disk (or the quota used up) while writing; names the file."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException, path, kept: str) -> DiskFullError | None:
    """The DiskFullError for `exc` raised while writing `path` (None if it is another error);
    `kept` says what is left as it was."""
    if isinstance(exc, DiskFullError) or not (isinstance(exc, OSError) and exc.errno in DISK_FULL):
        return None
    return DiskFullError(f"{path}: the disk is full ({os.strerror(exc.errno)}) while writing it; {kept}; free some "
                         f"space on it (df -h {Path(path).parent}) and run again")


@contextmanager
def naming_a_full_disk(path, kept: str):
    """Turn a full disk while writing `path` into a DiskFullError that names it."""
    try:
        yield
    except OSError as exc:
        error = disk_full(exc, path, kept)
        if error is None:
            raise
        raise error from None


class ConfigError(PipelineError, ValueError):
    """A config file or value a person has to fix; the message names the file and the key."""


LAYOUTS = ("auto", "photo-reconstruction", "generic")
CHANNEL_ORDERS = ("rgb", "bgr")
VALUE_KINDS = ("decimal", "integer")
VAL_INPUTS = ("masked", "clean")


@dataclass
class DataConfig:
    """Where the competition lies, how its files are laid out and what its submission looks like."""

    root: Path = Path("data/sample")  # competition folder (its Dataset/ folder is found inside)
    truth: Path | None = Path("data/sample-truth")  # unmasked test images, when known (sample)
    # auto: photo-reconstruction when a Training_Data/ + Testing_Data/ pair lies under root,
    # else generic (train/<class>/ + test/ + a bbox CSV); see pipeline/data/competition.py
    layout: str = "auto"
    image_size: int = 256
    box_size: int = 75
    boxes_per_image: int = 2
    val_count: int = 24  # training images held out, with fixed boxes, for local scoring
    val_seed: int = 0
    # val model input: masked = the competition's masked JPEG copy (photo-reconstruction layout:
    # the same compression artefacts as the test set), clean = the photo with its boxes blanked
    val_inputs: str = "masked"
    bbox_csv: str | None = None  # generic layout: file name inside root; None: the one bbox CSV
    train_dir: str = "train"  # generic layout
    test_dir: str = "test"  # generic layout
    # class of a test image in a flat folder: the `label` group of this regex on its file name
    label_pattern: str = r"^(?P<label>[A-Za-z]+)"
    # submission format: auto (the layout's preset), a preset name (pipeline/submission/formats/)
    # or a YAML file; channels / values override the format's (values: the sample submission's
    # range decides when it is unset and the competition ships one)
    format: str = "auto"
    channels: str | None = None  # rgb (channel 0 = red) | bgr (channel 0 = blue)
    values: str | None = None  # decimal (pixel/255, 0..1) | integer (0..255)
    # ids of a sample_submission.csv that the format's id template does not describe: a regex with
    # the groups image, box (optional with image coordinates), row, col, channel
    id_pattern: str | None = None


@dataclass
class VariantConfig:
    """One leaderboard entry: a method, its parameters, and the data it runs on."""

    name: str
    method: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 8
    source: Path | None = None  # the YAML file this came from
    overrides: dict[str, str] = field(default_factory=dict)  # params given as --param key=value

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (paths as strings), for checkpoints and the leaderboard."""
        out = dataclasses.asdict(self)
        out.pop("source")
        out.pop("overrides")
        return json.loads(json.dumps(out, default=str))


def param_where(variant: VariantConfig, key: str) -> str:
    """Who set params.<key>: the command line's --param, or the variant's file (for messages)."""
    if key in variant.overrides:
        return f"--param {key}={variant.overrides[key]}"
    return f"{variant.source or variant.name}: params.{key}"


def _build(cls, values: dict[str, Any], where: str):
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    return cls(**values)


def parse_params(cls, params: dict[str, Any], variant: VariantConfig):
    """Build a method's params dataclass from `variant.params`; errors name the variant file, or
    the command-line argument when the key came from --param."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    given = [k for k in unknown if k in variant.overrides]
    if given:
        raise ConfigError(f"--param {given[0]}={variant.overrides[given[0]]}: {variant.method} has no parameter "
                          f"{given[0]!r}; allowed: {', '.join(sorted(known))}")
    obj = _build(cls, dict(params), f"{variant.source or variant.name}: params")
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        # YAML gives ints where floats are meant; anything else of the wrong type is an error
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            setattr(obj, f.name, float(value))
        elif default is not None and not isinstance(value, type(default)):
            raise ConfigError(f"{param_where(variant, f.name)}: expected {type(default).__name__}, got {value!r}")
    return obj


def data_config(values: dict[str, Any] | None = None, where: str = "data") -> DataConfig:
    """DataConfig from a mapping (paths converted); checks box geometry is possible."""
    values = dict(values or {})
    cfg = _build(DataConfig, values, where)
    cfg.root = Path(cfg.root)
    cfg.truth = Path(cfg.truth) if cfg.truth else None
    if cfg.box_size <= 0 or cfg.box_size > cfg.image_size:
        raise ConfigError(f"{where}.box_size: {cfg.box_size} does not fit a {cfg.image_size} image")
    for name in ("image_size", "box_size", "boxes_per_image", "val_count", "val_seed"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}.{name}: expected a non-negative integer, got {value!r}")
    if cfg.boxes_per_image < 1:
        raise ConfigError(f"{where}.boxes_per_image: must be at least 1")
    for name, allowed in (("layout", LAYOUTS), ("channels", CHANNEL_ORDERS), ("values", VALUE_KINDS),
                          ("val_inputs", VAL_INPUTS)):
        value = getattr(cfg, name)
        if value is not None and value not in allowed:
            raise ConfigError(f"{where}.{name}: {value!r} is not one of {', '.join(allowed)}")
    for name in ("id_pattern", "label_pattern"):
        pattern = getattr(cfg, name)
        try:
            if pattern is not None:
                re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}.{name}: not a valid regular expression ({exc})") from exc
    if "label" not in re.compile(cfg.label_pattern).groupindex:
        raise ConfigError(f"{where}.label_pattern: needs a named group (?P<label>...)")
    return cfg


def resolve_variant_path(name_or_path: str | Path) -> Path:
    """`telea` -> configs/telea.yaml; an existing path is returned as is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"no variant config {name_or_path!r}: expected {candidate}; available: {available}")


def load_variant(name_or_path: str | Path, data_root: str | Path | None = None) -> VariantConfig:
    """Load configs/<name>.yaml (or a path) into a VariantConfig.

    `data_root` (the CLI's --data / make DATA=...) overrides `data.root`; when it is given and
    differs from the sample, the sample's ground-truth folder no longer applies.
    """
    path = resolve_variant_path(name_or_path)
    return variant_from_dict(read_yaml(path), source=path, data_root=data_root)


def read_yaml(path: Path):
    """The parsed YAML file (an empty file is {}); a syntax error names the file."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


SWEEP_KEYS = ("base", "variants", "description")


def load_sweep(path: str | Path, data_root: str | Path | None = None) -> list[VariantConfig]:
    """The variants of a sweep file, in file order.

    A sweep is a `base` (a variant config: a name/path of one, or the mapping itself) and a list
    of `variants`, each with a unique `name` and the keys it changes: `params` and `data` are
    merged key by key over the base's, any other key (description, batch_size, method) replaces
    the base's. Every variant is checked as a whole before any is returned.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such sweep file")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'base' and 'variants'")
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SWEEP_KEYS)}")
    base = raw.get("base")
    if isinstance(base, str):
        beside = path.parent / base  # a file name relative to the sweep file
        base_path = beside if beside.suffix in (".yaml", ".yml") and beside.exists() else resolve_variant_path(base)
        base = read_yaml(base_path)
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base: expected a variant config name/path or a mapping")
    entries = raw.get("variants")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: variants: expected a non-empty list of mappings with a name")
    variants, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{path}: variants[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where}: expected a mapping with a 'name'")
        name = entry["name"]
        if not re.match(VARIANT_NAME, name):
            raise ConfigError(f"{where}: name {name!r}: letters, digits, '.', '_' and '-' only")
        if name in seen:
            raise ConfigError(f"{where}: name {name!r} appears twice")
        seen.add(name)
        merged = {**base, **entry}
        for key in ("params", "data"):
            if not isinstance(entry.get(key, {}), dict):
                raise ConfigError(f"{where}.{key}: expected a mapping")
            merged[key] = {**(base.get(key) or {}), **(entry.get(key) or {})}
        variants.append(variant_from_dict(merged, source=path, data_root=data_root))
    return variants


def variant_from_dict(
    raw: dict[str, Any], source: Path | None = None, data_root: str | Path | None = None
) -> VariantConfig:
    """VariantConfig from an already-parsed mapping (a YAML file, a sweep entry, a checkpoint)."""
    where = str(source or "variant")
    raw = dict(raw)
    if "method" not in raw:
        raise ConfigError(f"{where}: missing 'method' (one of the inpainters, e.g. telea)")
    raw.setdefault("name", source.stem if source else raw["method"])
    data = dict(raw.pop("data", None) or {})
    if data_root is not None:
        if Path(data_root) != Path(data.get("root", DataConfig.root)):
            data["truth"] = None  # the config's ground truth belongs to its own data folder
        data["root"] = data_root
    variant = _build(VariantConfig, raw, where)
    if not isinstance(variant.name, str) or not re.fullmatch(VARIANT_NAME, variant.name):
        raise ConfigError(f"{where}: name {variant.name!r}: letters, digits, '.', '_' and '-' only "
                          "(it names submissions/<name>.csv)")
    if not isinstance(variant.batch_size, int) or variant.batch_size < 1:
        raise ConfigError(f"{where}: batch_size: expected a positive integer, got {variant.batch_size!r}")
    variant.data = data_config(data, f"{where}: data")
    variant.params = dict(variant.params or {})
    variant.source = source
    return variant
