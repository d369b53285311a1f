"""The verdict: which variant won on one validation split, by how much over Telea, and what to do
next. Reads the leaderboard (pipeline.leaderboard), the last step of the flow; writes nothing.

    latest row per variant on the split -> ranked by validation RMSE -> gain of each over Telea
    (the inpainting every learned variant has to beat) and over the best classical baseline
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from pipeline.config import ConfigError
from pipeline.leaderboard import Leaderboard, gains_over_baseline, is_baseline
from pipeline.next_step import NextStep

TELEA = "telea"  # the method whose row every gain is measured from
# the methods whose predictions come from a neural network (trained here, or pretrained)
LEARNED = frozenset({"pix2pix", "pconv", "glcic", "torchscript", "sd"})


@dataclass(frozen=True)
class Ranked:
    """One variant's latest row on the split: RMSE on 0..1, gains in RMSE (positive: better than
    Telea / the best classical baseline) and in percent of theirs."""

    variant: str
    method: str
    val_rmse: float
    gain_over_telea: float
    gain_over_telea_pct: float
    gain_over_baseline: float
    gain_over_baseline_pct: float
    baseline: bool
    learned: bool


@dataclass(frozen=True)
class Verdict:
    split: str | None
    data: list[str]  # the competition folders the rows were scored on
    ranking: list[Ranked]  # best validation RMSE first
    telea: Ranked
    best_baseline: Ranked
    next_steps: list[tuple[NextStep, str]]  # (step, what it gives)

    @property
    def winner(self) -> Ranked:
        return self.ranking[0]

    @property
    def best_learned(self) -> Ranked | None:
        return next((r for r in self.ranking if r.learned), None)


def verdict(leaderboard: Leaderboard, split: str | None = None) -> Verdict:
    """The verdict on `split` (default: the newest row's). ConfigError when the split holds no
    scored row, or no Telea row to measure from, naming the step that makes one."""
    split = leaderboard.current_split(split)
    table = leaderboard.latest(split=split) if split is not None else leaderboard.latest()
    if split is None:
        table = table[table["split"].isna()]
    table = table[pd.to_numeric(table["val_rmse"], errors="coerce").notna()].reset_index(drop=True)
    if table.empty:
        raise ConfigError(f"{leaderboard.path}: no variant scored on a validation split yet: run "
                          f"`{NextStep('submit', {'variant': TELEA})}` first")
    telea_rows = table[table["method"] == TELEA]
    if telea_rows.empty:
        data = str(table["data"].iloc[0])
        raise ConfigError(f"{leaderboard.path}: no Telea row on this validation split ({data}) to measure the "
                          f"gains from: run `{NextStep('submit', {'variant': TELEA, 'data': data})}` first")
    named = telea_rows[telea_rows["variant"] == TELEA]  # the plain telea config when there are several
    telea_rmse = float((named if len(named) else telea_rows)["val_rmse"].iloc[0])
    table = gains_over_baseline(table.sort_values("val_rmse", kind="stable"))
    ranking = [Ranked(variant=str(row["variant"]), method=str(row["method"]), val_rmse=float(row["val_rmse"]),
                      gain_over_telea=telea_rmse - float(row["val_rmse"]),
                      gain_over_telea_pct=100.0 * (telea_rmse - float(row["val_rmse"])) / telea_rmse,
                      gain_over_baseline=float(row["gain"]), gain_over_baseline_pct=float(row["gain_pct"]),
                      baseline=is_baseline(row["method"]), learned=row["method"] in LEARNED)
               for _, row in table.iterrows()]
    telea_name = str((named if len(named) else telea_rows)["variant"].iloc[0])
    telea = next(r for r in ranking if r.variant == telea_name)
    best_baseline = next(r for r in ranking if r.baseline)
    data = sorted({str(d) for d in table["data"].dropna()})
    return Verdict(split, data, ranking, telea, best_baseline, _next_steps(ranking[0], data))


def _next_steps(winner: Ranked, data: list[str]) -> list[tuple[NextStep, str]]:
    """What to run after the verdict: the report, the web app, then the real competition."""
    real = "data/raw/<slug>"
    return [
        (NextStep("compare", {}), "the report: table, RMSE chart, per class, gallery side by side"),
        (NextStep("serve", {}), "brush a mask on your own photo and inpaint it with each variant"),
        (NextStep("data", {"competition": "<slug>"}), "the real competition (needs your Kaggle API token)"),
        (NextStep("submit", {"variant": winner.variant, "data": real}), "the winner on it"),
        (NextStep("kaggle-submit", {"variant": winner.variant, "competition": "<slug>", "data": real}),
         "upload its CSV once it validates"),
    ]


def format_verdict(result: Verdict) -> str:
    """The verdict as lines for the terminal: the winner, the ranking, the next steps."""
    winner, telea = result.winner, result.telea
    where = ", ".join(result.data) or "no data folder"
    lines = [f"verdict on the validation split of {where} ({len(result.ranking)} variants, latest row of each):"]
    if winner.variant == telea.variant:
        lines.append(f"  Telea wins: validation RMSE {telea.val_rmse:.4f}; no other variant beat it")
    else:
        lines.append(f"  {winner.variant} wins: validation RMSE {winner.val_rmse:.4f}, {_gain(winner)} Telea's "
                     f"{telea.val_rmse:.4f}")
    learned = result.best_learned
    if learned is not None and learned.variant != winner.variant:
        lines.append(f"  best learned model: {learned.variant} ({learned.method}), RMSE {learned.val_rmse:.4f}, "
                     f"{_gain(learned)} Telea's")
    if result.best_baseline.variant != telea.variant:
        best = result.best_baseline
        lines.append(f"  best classical baseline: {best.variant} ({best.val_rmse:.4f}), not Telea; "
                     f"{winner.variant} is {_below(winner.gain_over_baseline, winner.gain_over_baseline_pct)} it")
    width = max(len(r.variant) for r in result.ranking)
    lines.append("")
    lines.append(f"  {'variant':{width}s}  val RMSE  vs Telea")
    for r in result.ranking:
        vs = "(Telea)" if r.variant == telea.variant else _signed(r.gain_over_telea, r.gain_over_telea_pct)
        lines.append(f"  {r.variant:{width}s}  {r.val_rmse:8.4f}  {vs}")
    lines.append("")
    lines.append("next:")
    steps = [(str(step), what) for step, what in result.next_steps]
    width = min(max(len(text) for text, _ in steps), 40)
    lines += [f"  {text:{width}s}  # {what}" for text, what in steps]
    return "\n".join(lines)


def _gain(r: Ranked) -> str:
    return _below(r.gain_over_telea, r.gain_over_telea_pct)


def _below(gain: float, pct: float) -> str:
    """"0.0123 (9.1%) below" for a positive gain, "... above" for a negative one."""
    return f"{abs(gain):.4f} ({abs(pct):.1f}%) {'below' if gain >= 0 else 'above'}"


def _signed(gain: float, pct: float) -> str:
    """A gain in RMSE and percent, as "-0.0123 (-9.1%)": the RMSE change (negative: better)."""
    if math.isnan(gain):
        return "n/a"
    return f"{-gain:+.4f} ({-pct:+.1f}%)"
