"""Free the disk the submission step leaves behind, keeping what a person needs.

    leaderboard rows -> the CSVs they name -> keep each variant's latest and every uploaded one
      -> the rest, the temporaries of stopped processes and unheld lock files: listed, or deleted

Kept, never touched: the CSV the newest row of each variant names (what `kaggle-submit` uploads)
and every CSV whose checksum a row records as uploaded to Kaggle (kaggle_ref set). Files no
leaderboard row names (the leaderboard itself, the duplicates page, a person's own files), and
files outside the leaderboard's folder, are not looked at; nor is a lock file a process holds. A removed CSV's rows stay on the leaderboard with their scores: nothing reads the file
again except an upload, and only the latest is uploaded. Deleted rather than compressed: a pruned
CSV is not needed for anything, and `submit` writes it again from the checkpoint if it ever is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.files import file_sha256, lock_is_held, locked, remove_unheld_lock, stale_temporaries
from pipeline.leaderboard import Leaderboard

# where the pipeline's lock files live (older versions left them behind)
LOCK_FOLDERS = (Path("submissions"), Path("weights"), Path("data/predictions"))


@dataclass(frozen=True)
class Entry:
    path: Path
    size: int  # bytes
    why: str  # why it is kept, or why it can go


@dataclass
class PrunePlan:
    remove: list[Entry] = field(default_factory=list)
    keep: list[Entry] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.remove)


def plan_prune(leaderboard: Leaderboard, lock_folders=LOCK_FOLDERS) -> PrunePlan:
    """What can go and what stays; reads the leaderboard and the files, changes nothing."""
    plan = PrunePlan()
    table = leaderboard.read()
    latest = _latest_by_path(table)
    uploaded = _uploaded(table)
    for path in _named_files(table, leaderboard):
        if path in latest:
            plan.keep.append(Entry(path, _size(path), f"{latest[path]}'s latest"))
            continue
        sha = file_sha256(path)
        if sha in uploaded:
            plan.keep.append(Entry(path, _size(path), f"uploaded to Kaggle (ref {uploaded[sha]})"))
            continue
        variants = ", ".join(sorted(set(table.loc[table["submission"].map(_resolve) == path, "variant"])))
        plan.remove.append(Entry(path, _size(path), f"an older CSV of {variants}: not its latest, never uploaded"))
    folders = {leaderboard.path.parent, *lock_folders}
    for folder in sorted(f for f in folders if f.is_dir()):
        for tmp in stale_temporaries(folder):
            plan.remove.append(Entry(tmp, _size(tmp), "temporary file of a process that stopped"))
    for folder in sorted(f for f in folders if f.is_dir()):
        pattern = "**/.lock" if folder == Path("data/predictions") else ".*.lock"
        for lock in sorted(folder.glob(pattern)):
            if not lock_is_held(lock):  # a held one is a run going on now
                plan.remove.append(Entry(lock, _size(lock), "lock file an earlier version left behind"))
    return plan


def apply_prune(plan: PrunePlan, leaderboard: Leaderboard) -> list[Entry]:
    """Delete what `plan` lists, each CSV under the lock `submit` writes it under and checked
    again there (a submit since the plan may have made it a latest); the entries removed."""
    removed = []
    for entry in plan.remove:
        if entry.path.name.endswith(".lock"):
            if remove_unheld_lock(entry.path):
                removed.append(entry)
        elif entry.path.name.endswith(".tmp"):
            if entry.path in stale_temporaries(entry.path.parent):
                entry.path.unlink(missing_ok=True)
                removed.append(entry)
        else:
            with locked(entry.path.with_name(f".{entry.path.name}.lock"), f"pruning {entry.path}"):
                table = leaderboard.read()
                if (entry.path.is_file() and entry.path not in _latest_by_path(table)
                        and file_sha256(entry.path) not in _uploaded(table)):
                    entry.path.unlink()
                    removed.append(entry)
    return removed


def format_plan(plan: PrunePlan, applied: list[Entry] | None = None, apply_step=None) -> str:
    """The plan as terminal lines: a summary, then each file to remove and each one kept."""
    if applied is not None:
        head = f"pruned: {len(applied)} file(s), {human(sum(e.size for e in applied))} freed"
        skipped = len(plan.remove) - len(applied)
        if skipped:
            head += f"; {skipped} left (in use, or changed since the listing)"
    elif plan.remove:
        head = (f"prune would free {human(plan.freed)} in {len(plan.remove)} file(s)"
                + (f": run `{apply_step}` to delete them" if apply_step else ""))
    else:
        head = "nothing to prune"
    width = max((len(str(e.path)) for e in plan.remove + plan.keep), default=0)
    done = {e.path for e in applied} if applied is not None else None
    lines = [head]
    for e in plan.remove:
        verb = "remove" if done is None else ("removed" if e.path in done else "left")
        lines.append(f"  {verb:7s} {str(e.path):{width}s}  {human(e.size):>9s}  {e.why}")
    for e in plan.keep:
        lines.append(f"  {'keep':7s} {str(e.path):{width}s}  {human(e.size):>9s}  {e.why}")
    return "\n".join(lines)


def human(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _resolve(path) -> Path | None:
    if path is None or (isinstance(path, float) and pd.isna(path)) or str(path) == "":
        return None
    return Path(path)


def _latest_by_path(table: pd.DataFrame) -> dict[Path, str]:
    """{CSV: variant} for the newest row of each variant."""
    newest = table.drop_duplicates("variant", keep="last")
    return {p: str(v) for p, v in zip(newest["submission"].map(_resolve), newest["variant"]) if p is not None}


def _uploaded(table: pd.DataFrame) -> dict[str, str]:
    """{sha256: Kaggle ref} of the rows uploaded to Kaggle."""
    rows = table[table["kaggle_ref"].notna() & table["sha256"].notna()]
    return {str(sha): str(ref) for sha, ref in zip(rows["sha256"], rows["kaggle_ref"])}


def _named_files(table: pd.DataFrame, leaderboard: Leaderboard) -> list[Path]:
    """The CSVs leaderboard rows name that are on disk in the leaderboard's folder, each once
    (never the leaderboard itself)."""
    folder = leaderboard.path.parent.resolve()
    paths = dict.fromkeys(p for p in table["submission"].map(_resolve) if p is not None)
    return [p for p in paths if p.is_file() and p.resolve().parent == folder
            and p.resolve() != leaderboard.path.resolve()]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
