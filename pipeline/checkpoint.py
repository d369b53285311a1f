"""Checkpoints of trained inpainters: written atomically, read back with checks a person can act on.

    checkpoints/<variant>/last.pt   everything to continue a run (`train --resume`): networks,
                                    optimizers, grad scaler, step/epoch position, RNG states, config
    checkpoints/<variant>/best.pt   the generator with the best validation RMSE, its config and
                                    score: what `predict` / `submit` load

Both carry the run's facts under "run" (RUN_FACTS: steps and epochs done, why training stopped,
training seconds, the git commit that trained it, the seed): `submit` puts them, with the file's
sha256, on the leaderboard row, so a 20-step run does not pass for a full one.

Both are plain dicts saved with torch.save and loaded with `weights_only=True` (tensors, numbers,
strings, lists, dicts only), so opening a checkpoint never runs code from it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import torch

from pipeline.config import PipelineError, VariantConfig, with_current_names
from pipeline.files import atomic_write, file_sha256
from pipeline.next_step import NextStep

FORMAT = "pipeline-checkpoint/1"
# what a checkpoint's "run" records (the leaderboard's columns of the same names)
RUN_FACTS = ("steps", "epochs", "stop_reason", "train_seconds", "git_commit", "git_dirty", "seed")
# a checkpoint saved while its run was still going: the run never reached its end (killed?)
UNFINISHED = "interrupted"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class CheckpointError(PipelineError, RuntimeError):
    """A checkpoint is missing, unreadable or belongs to another configuration; says what to do."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` (plus the format tag) to a temp file beside `path`, then rename it over.

    A run killed mid-write leaves the previous checkpoint whole.
    """
    with atomic_write(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def read_checkpoint(path: Path, hint: str = "", named_by_user: bool = False) -> dict[str, Any]:
    """The dict saved at `path` (tensors on the CPU); CheckpointError if missing or unreadable.

    named_by_user: the person pointed at this file (params.checkpoint), so a missing one is a
    path to check, and an unreadable one is not "ours to delete": the message says what the file
    is not and that nothing was touched.
    """
    path = Path(path)
    if not path.is_file():
        if named_by_user:
            what = "it is a folder" if path.is_dir() else "the file does not exist"
            raise CheckpointError(f"{path}: no checkpoint there: {what}; check the path you gave. {hint}".strip())
        raise CheckpointError(f"{path}: no checkpoint there. {hint}".strip())
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, foreign pickle: all unreadable
        why = f"{type(exc).__name__}: {_first_sentence(str(exc))}" if str(exc).strip() else type(exc).__name__
        if named_by_user:
            raise CheckpointError(
                f"{path}: not a checkpoint of this pipeline, or a damaged one ({why}); the file was left "
                "as it is. Point to a best.pt or last.pt that `train` wrote (checkpoints/<variant>/)."
            ) from exc
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint ({why}); it is corrupt (a copy cut short?): "
            "delete it and train again, or point to another file."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT or "config" not in state:
        raise CheckpointError(f"{path}: not a checkpoint written by this pipeline ({FORMAT})"
                              + ("; the file was left as it is" if named_by_user else "")
                              + f"; train one with `{NextStep('train', {'variant': '<variant>'})}`")
    return state


def _first_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of an exception's text (terminal colour codes removed), at most about
    `limit` characters and cut at a word, so a message quoting it reads to its end."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()[0].strip()
    end = re.search(r"[.!?](\s|$)", text)
    text = text[:end.start() + 1] if end else text
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return text


def config_differences(saved: dict[str, Any], current: dict[str, Any], keys) -> list[str]:
    """'key: checkpoint X, config Y' for each of `keys` whose values differ."""
    missing = object()
    out = []
    for key in keys:
        a, b = saved.get(key, missing), current.get(key, missing)
        if a != b:
            out.append(f"{key}: checkpoint {'(unset)' if a is missing else repr(a)}, "
                       f"config {'(unset)' if b is missing else repr(b)}")
    return out


def check_same_config(path: Path, state: dict[str, Any], variant: VariantConfig, params: dict[str, Any],
                      param_keys, what: str) -> None:
    """Raise CheckpointError naming every one of `param_keys` (and the image size) on which the
    checkpoint's config and `variant` disagree; `params` are the variant's params with defaults
    filled in, as checkpoints store them. `what` says what needs them equal."""
    saved = state["config"]
    # a checkpoint written before a param was renamed stores it under its old name
    diffs = config_differences(with_current_names(saved.get("params", {})), params, param_keys)
    saved_data, data = saved.get("data", {}), variant.to_dict()["data"]
    diffs += config_differences(saved_data, data, ("image_size",))
    if saved.get("method") != variant.method:
        diffs.insert(0, f"method: checkpoint {saved.get('method')!r}, config {variant.method!r}")
    if diffs:
        source = variant.source or variant.name
        raise CheckpointError(
            f"{path} was trained as variant {saved.get('name')!r} with a different {what} than {source}: "
            + "; ".join(diffs)
            + f". Use this variant's own checkpoint (checkpoints/{variant.name}/), or a config that "
            "matches the checkpoint"
        )


def load_state_dict(path: Path, module: torch.nn.Module, state_dict: dict[str, torch.Tensor], name: str) -> None:
    """module.load_state_dict, turning a shape/key mismatch into a CheckpointError naming `path`."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: its {name} weights do not fit this architecture "
                              f"({str(exc).splitlines()[0]} ...); it comes from another model") from exc


def source_version(root: Path = PROJECT_ROOT) -> tuple[str | None, bool | None]:
    """(the commit checked out at `root`, whether tracked or unignored files differ from it);
    (None, None) where `root` is no git checkout or git is missing (Kaggle's read-only copy)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top.strip()).resolve() != Path(root).resolve():
        return None, None  # an installed copy inside some other repository is not that repository's code
    commit = git("rev-parse", "--verify", "HEAD")
    if not commit:
        return None, None
    status = git("status", "--porcelain")
    return commit.strip(), None if status is None else bool(status.strip())


def run_facts(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard's facts of the run that wrote the checkpoint `state` (read from `path`):
    RUN_FACTS (None where a checkpoint older than them has none) and checkpoint_sha256."""
    saved = state.get("run") or {}
    return {key: saved.get(key) for key in RUN_FACTS} | {"checkpoint_sha256": file_sha256(Path(path))}


def stamp_run_facts(path: Path, facts: dict[str, Any]) -> None:
    """Rewrite the checkpoint at `path` (atomically) with `facts` as its run's; the rest unchanged."""
    state = read_checkpoint(path)
    state["run"] = {**state.get("run", {}), **facts}
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format"})
