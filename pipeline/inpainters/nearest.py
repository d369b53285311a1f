"""`nearest`: boxes filled from a training photo that is a copy of the image, else the fallback's.

A test or validation image whose best match in the duplicates file (pipeline/duplicates.py) has a
known-pixel RMSE at or under `max_known_rmse` gets its boxes from that photo, flipped/rotated,
registered and colour-fitted as found; every other image gets the `fallback` variant's prediction
unchanged (the same method run on the same batch, so its pixels are the fallback's byte for byte).
The duplicates file is read when it is current for the data folder, else searched and saved.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from pipeline.config import ConfigError, VariantConfig, load_variant, param_where, parse_params
from pipeline.duplicates import COPY_RMSE, Match, aligned_photo, load, load_or_find
from pipeline.inpainters.base import InpaintBatch, Inpainter, build_inpainter, check_params, preflight


@dataclass
class NearestParams:
    fallback: str = "telea"  # the variant (configs/<name>.yaml) that fills images without a copy
    # known-pixel RMSE (0..1) at or under which a match is a copy; docs/duplicates.md: how 0.03 was measured
    max_known_rmse: float = COPY_RMSE


class NearestInpainter(Inpainter):
    def __init__(self, fallback: Inpainter, chosen: dict[str, Match], size: int):
        self.fallback = fallback
        self.chosen = chosen  # image id -> the copy its boxes come from
        self.size = size

    @staticmethod
    def _parse(variant: VariantConfig) -> tuple[NearestParams, VariantConfig]:
        params = parse_params(NearestParams, variant.params, variant)
        if not 0 < params.max_known_rmse < 1:
            raise ConfigError(f"{param_where(variant, 'max_known_rmse')}: a known-pixel RMSE on the 0..1 scale, "
                              f"e.g. {COPY_RMSE}")
        try:
            fallback = load_variant(params.fallback)
        except ConfigError as exc:
            raise ConfigError(f"{param_where(variant, 'fallback')}: {exc}") from None
        if fallback.method == "nearest":
            raise ConfigError(f"{param_where(variant, 'fallback')}: {params.fallback!r} is itself a nearest variant; "
                              "name one that predicts every image (telea, unet-l2-cpu, ...)")
        fallback.data = variant.data  # the same competition, whatever DATA= said
        return params, fallback

    @classmethod
    def check_params(cls, variant: VariantConfig) -> None:
        check_params(cls._parse(variant)[1])

    @classmethod
    def preflight(cls, variant: VariantConfig) -> None:
        preflight(cls._parse(variant)[1])

    @classmethod
    def from_config(cls, variant: VariantConfig) -> "NearestInpainter":
        from pipeline.data.competition import load_competition

        params, fallback = cls._parse(variant)
        competition = load_competition(variant.data, check_images=False)
        if load(competition) is None:
            print(f"{variant.name}: no current duplicates file for {competition.root}; searching",
                  file=sys.stderr, flush=True)
        result = load_or_find(competition)
        chosen, counts = {}, []
        for split in ("val", "test"):
            records = competition.split(split)
            matched = [r for r in records if (m := result.best(split, r.image_id)) and m.rmse <= params.max_known_rmse]
            chosen.update({r.image_id: result.best(split, r.image_id) for r in matched})
            boxes = sum(len(r.boxes) for r in records)
            counts.append(f"{split} {sum(len(r.boxes) for r in matched)} of {boxes}")
        # the leaderboard row and the report show the description: say how many boxes are copies
        summary = (f"boxes from training copies (known RMSE <= {params.max_known_rmse}): {', '.join(counts)}; "
                   f"the rest {params.fallback}")
        if summary not in variant.description:
            variant.description = f"{variant.description}; {summary}" if variant.description else summary
        return cls(build_inpainter(fallback), chosen, competition.config.image_size)

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        out = np.array(self.fallback.inpaint(batch), dtype=np.uint8, copy=True)
        for i, image_id in enumerate(batch.image_ids):
            match = self.chosen.get(image_id)
            if match is not None and batch.masked_images.shape[1:3] == (self.size, self.size):
                out[i] = aligned_photo(match, self.size)
        return out
