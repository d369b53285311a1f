"""Where predictions lie: data/predictions/<competition>/<variant>/<split>/<image_id>.png, and
reading one back. `pipeline.predict` writes these folders; scoring, submissions and the report
read them.

<competition> is the data folder's name and a digest of its absolute path, so runs on two data
folders never share predictions.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from pipeline.data.competition import Competition, CompetitionError, ImageRecord, read_image
from pipeline.next_step import NextStep

PREDICTIONS_DIR = Path("data/predictions")


def competition_key(competition: Competition) -> str:
    """A folder name for the competition: its folder's name plus a digest of its absolute path."""
    root = Path(competition.root).resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", root.name).strip("-") or "data"
    return f"{name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"


def prediction_dir(variant_name: str, split: str, competition: Competition, root: Path = PREDICTIONS_DIR) -> Path:
    return Path(root) / competition_key(competition) / variant_name / split


def load_prediction(folder: Path, record: ImageRecord, size: int) -> np.ndarray:
    """uint8 (size, size, 3) RGB: the prediction of `record` in `folder` (a prediction_dir)."""
    path = Path(folder) / f"{record.image_id}.png"
    if not path.exists():
        step = NextStep("predict", {"variant": Path(folder).parent.name})
        raise CompetitionError(f"{path}: prediction missing; re-run `{step}`")
    return read_image(path, size)
