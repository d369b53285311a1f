"""The sd step: a sweep of variants (e.g. Stable Diffusion prompts) run one after another, each to
its own submission, scores and leaderboard row, after every variant passed its checks."""

from __future__ import annotations

import json
from typing import Callable

from pipeline.config import ConfigError, VariantConfig, load_sweep, load_variant
from pipeline.leaderboard import Leaderboard


def sweep_variants(sweep: str | None, variant: str | None, only: str | None = None,
                   data_root: str | None = None) -> list[VariantConfig]:
    """The variants of the sweep file `sweep`, or the one `variant`; `only`: comma-separated names
    of the sweep's variants to keep (ConfigError naming the unknown ones)."""
    if bool(sweep) == bool(variant):
        raise ConfigError("sd needs --sweep FILE (a list of variants) or --variant NAME (one)")
    variants = load_sweep(sweep, data_root=data_root) if sweep else [load_variant(variant, data_root=data_root)]
    if only:
        wanted = [name.strip() for name in only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {v.name for v in variants})
        if unknown:
            raise ConfigError(f"--only: no variant(s) {', '.join(unknown)} in {sweep or variant}; "
                              f"available: {', '.join(v.name for v in variants)}")
        variants = [v for v in variants if v.name in wanted]
    return variants


def run_sweep(variants: list[VariantConfig], leaderboard: Leaderboard,
              on_entry: Callable[[VariantConfig, dict], None] | None = None) -> list[dict] | None:
    """Check every variant (config, weights on disk), then submit each in turn.

    Returns the leaderboard rows on the main process, None on the others (under accelerate
    launch the main one alone writes and reports); `on_entry(variant, row)` after each, main only.
    """
    from pipeline.inpainters.base import preflight
    from pipeline.predict import load_competition_once, process_state
    from pipeline.submit import submit_variant

    for variant in variants:  # before any other work: every config valid, every model's weights here
        preflight(variant)
    main = process_state().is_main_process
    entries, competitions = [], {}
    for variant in variants:
        key = json.dumps(variant.to_dict()["data"], sort_keys=True)
        if key not in competitions:  # variants on the same data share one manifest
            competitions[key] = load_competition_once(variant.data)
        entry = submit_variant(variant, competitions[key], leaderboard)
        if main:
            entries.append(entry)
            if on_entry:
                on_entry(variant, entry)
    return entries if main else None
