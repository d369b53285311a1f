"""Typed configuration: one YAML file per variant under configs/, loaded into dataclasses that
pydantic checks.

A variant file names the inpainting `method` and its `params`; the `data` block describes the
competition (box size and count, validation split). The variant's `name` is what the leaderboard
shows. Unknown keys are errors, so a typo never silently falls back to a default; a value of the
wrong type or out of range is an error naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, get_args, get_origin

import pydantic
import yaml
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

REPO_ROOT = Path(__file__).resolve().parent.parent
# configs/ of a checkout; an installed package (`pip install .`) carries them as pipeline/configs/
CONFIG_DIR = REPO_ROOT / "configs" if (REPO_ROOT / "configs").is_dir() else Path(__file__).resolve().parent / "configs"
VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # it names files: submissions/<name>.csv


class PipelineError(Exception):
    """An error a person can act on: the CLI prints its message (no traceback) and exits 2."""


class ConfigError(PipelineError, ValueError):
    """A config file or value a person has to fix; the message names the file and the key."""


# params renamed since configs were written with them: old key -> its name now
RENAMED_PARAMS = {"hole_init": "hole_fill", "prefill": "hole_fill"}

Layout = Literal["auto", "photo-reconstruction", "generic"]
ChannelOrder = Literal["rgb", "bgr"]
ValueKind = Literal["decimal", "integer"]
ValInputs = Literal["masked", "clean"]

# Field types with their bounds; a failing value's message says them in words (see `_expected`)
NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
YamlPath = Annotated[Path, Field(strict=False)]  # YAML gives a string

# strict: no value is converted (not "3" to 3, not 1 to True) except YAML's int where a float is meant
CHECKED = ConfigDict(strict=True, extra="forbid")


@dataclass(config=CHECKED)
class DataConfig:
    """Where the competition lies, how its files are laid out and what its submission looks like."""

    root: YamlPath = Path("data/sample")  # competition folder (its Dataset/ folder is found inside)
    truth: YamlPath | None = Path("data/sample-truth")  # unmasked test images, when known (sample)
    # auto: photo-reconstruction when a Training_Data/ + Testing_Data/ pair lies under root,
    # else generic (train/<class>/ + test/ + a bbox CSV); see pipeline/data/competition.py
    layout: Layout = "auto"
    image_size: NonNegative = 256
    box_size: NonNegative = 75
    boxes_per_image: Positive = 2
    val_count: NonNegative = 24  # training images held out, with fixed boxes, for local scoring
    val_seed: NonNegative = 0
    # val model input: masked = the competition's masked JPEG copy (photo-reconstruction layout:
    # the same compression artefacts as the test set), clean = the photo with its boxes blanked
    val_inputs: ValInputs = "masked"
    bbox_csv: str | None = None  # generic layout: file name inside root; None: the one bbox CSV
    train_dir: str = "train"  # generic layout
    test_dir: str = "test"  # generic layout
    # class of a test image in a flat folder: the `label` group of this regex on its file name
    label_pattern: str = r"^(?P<label>[A-Za-z]+)"
    # submission format: auto (the layout's preset), a preset name (pipeline/submission/formats/)
    # or a YAML file; channels / values override the format's (values: the sample submission's
    # range decides when it is unset and the competition ships one)
    format: str = "auto"
    channels: ChannelOrder | None = None  # rgb (channel 0 = red) | bgr (channel 0 = blue)
    values: ValueKind | None = None  # decimal (pixel/255, 0..1) | integer (0..255)
    # ids of a sample_submission.csv that the format's id template does not describe: a regex with
    # the groups image, box (optional with image coordinates), row, col, channel
    id_pattern: str | None = None


@dataclass(config=CHECKED)
class VariantConfig:
    """One leaderboard entry: a method, its parameters, and the data it runs on."""

    name: str
    method: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: Positive = 8
    source: YamlPath | None = None  # the YAML file this came from
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


def _expected(info) -> str:
    """What a field takes, in words, from its type and bounds: 'float', 'a positive integer'."""
    kind, options = info.annotation, get_args(info.annotation)
    optional = type(None) in options and get_origin(kind) is not Literal
    if optional:
        kind = next(option for option in options if option is not type(None))
    if get_origin(kind) is Annotated:  # YamlPath
        kind = get_args(kind)[0]
    bounds = {name: getattr(m, name) for m in info.metadata for name in ("ge", "le") if hasattr(m, name)}
    if kind is int and bounds in ({"ge": 0}, {"ge": 1}):
        words = "a non-negative integer" if bounds["ge"] == 0 else "a positive integer"
    elif bounds == {"ge": 0, "le": 1}:
        words = "a fraction 0..1"
    elif bounds:
        words = f"{kind.__name__} " + " and ".join(f"{'>=' if k == 'ge' else '<='} {v}" for k, v in bounds.items())
    elif kind is dict or get_origin(kind) is dict:
        words = "a mapping"
    else:
        words = getattr(kind, "__name__", str(kind))
    return words + (" or null" if optional else "")


def _problems(error: pydantic.ValidationError, cls, where: Callable[[str], str]) -> str:
    """The ValidationError's problems, one a line, each naming its key through `where`."""
    fields = cls.__pydantic_fields__
    lines = []
    for problem in error.errors(include_url=False):
        key, *inner = [str(part) for part in problem["loc"]] or [""]
        got = problem.get("input")
        if inner:  # inside a mapping's value
            lines.append(f"{where(key)}: {'.'.join(inner)}: {problem['msg']}, got {got!r}")
        elif problem["type"] == "missing":
            lines.append(f"{where(key)}: missing")
        elif problem["type"] == "literal_error":
            choices = get_args(fields[key].annotation)
            choices = get_args(choices[0]) if get_origin(choices[0]) is Literal else choices  # X | None
            lines.append(f"{where(key)}: {got!r} is not one of {', '.join(map(str, choices))}")
        elif key in fields:
            lines.append(f"{where(key)}: expected {_expected(fields[key])}, got {got!r}")
        else:
            lines.append(f"{where(key)}: {problem['msg']}")
    return "\n".join(lines)


@functools.cache
def _checked(cls):
    """`cls` if pydantic checks it, else a pydantic copy of the plain dataclass (a method's params)."""
    if pydantic.dataclasses.is_pydantic_dataclass(cls):
        return cls
    return dataclass(cls, config=CHECKED)


def _build(cls, values: dict[str, Any], where: str, key_where: Callable[[str], str] | None = None):
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys by name and, through pydantic,
    values of the wrong type or out of bounds: ConfigError naming `key_where(key)` (default
    `where.key`) and what the key takes."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    checked = _checked(cls)
    try:
        obj = checked(**values)
    except pydantic.ValidationError as exc:
        raise ConfigError(_problems(exc, checked, key_where or (lambda key: f"{where}.{key}"))) from None
    return obj if checked is cls else cls(**{name: getattr(obj, name) for name in known})


def parse_params(cls, params: dict[str, Any], variant: VariantConfig):
    """Build a method's params dataclass from `variant.params`; errors name the variant file, or
    the command-line argument when the key came from --param."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    given = [k for k in unknown if k in variant.overrides]
    if given:
        raise ConfigError(f"--param {given[0]}={variant.overrides[given[0]]}: {variant.method} has no parameter "
                          f"{given[0]!r}; allowed: {', '.join(sorted(known))}")
    return _build(cls, dict(params), f"{variant.source or variant.name}: params",
                  lambda key: param_where(variant, key))


def data_config(values: dict[str, Any] | None = None, where: str = "data") -> DataConfig:
    """DataConfig from a mapping (paths converted); checks box geometry is possible."""
    values = dict(values or {})
    if "truth" in values and not values["truth"]:
        values["truth"] = None  # "" as well: no ground truth
    cfg = _build(DataConfig, values, where)
    if cfg.box_size <= 0 or cfg.box_size > cfg.image_size:
        raise ConfigError(f"{where}.box_size: {cfg.box_size} does not fit a {cfg.image_size} image")
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


def check_renamed_params(params: Any, where: str) -> None:
    """ConfigError naming `where` (a file) when `params` uses a key that has been renamed."""
    old = sorted(set(params) & set(RENAMED_PARAMS)) if isinstance(params, dict) else []
    if old:
        raise ConfigError(f"{where}: params.{old[0]}: this key is now `{RENAMED_PARAMS[old[0]]}`; rename it in the file")


def with_current_names(params: dict[str, Any]) -> dict[str, Any]:
    """`params` (e.g. as a checkpoint stored them) with renamed keys under their names now."""
    return {RENAMED_PARAMS.get(key, key): value for key, value in params.items()}


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
    raw = read_yaml(path)
    check_renamed_params(raw.get("params") if isinstance(raw, dict) else None, str(path))
    return variant_from_dict(raw, source=path, data_root=data_root)


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
    base, base_where = raw.get("base"), f"{path}: base"
    if isinstance(base, str):
        beside = path.parent / base  # a file name relative to the sweep file
        base_path = beside if beside.suffix in (".yaml", ".yml") and beside.exists() else resolve_variant_path(base)
        base, base_where = read_yaml(base_path), str(base_path)
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base: expected a variant config name/path or a mapping")
    check_renamed_params(base.get("params"), base_where)
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
        check_renamed_params(entry.get("params"), where)
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
    for key in ("params", "description"):
        if key in raw and raw[key] is None:  # `params:` with nothing under it
            del raw[key]
    raw["data"] = data_config(data, f"{where}: data")
    variant = _build(VariantConfig, raw, where, lambda key: f"{where}: {key}")
    if not re.fullmatch(VARIANT_NAME, variant.name):
        raise ConfigError(f"{where}: name {variant.name!r}: letters, digits, '.', '_' and '-' only "
                          "(it names submissions/<name>.csv)")
    variant.params = dict(variant.params)
    variant.source = source
    return variant
