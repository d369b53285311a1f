"""Guards for breaks that once left every other test green (issue 16): each test here fails when
its one piece of the pipeline is undone, and is written against what the pipeline does, not how.

- a network's output past -1..1 saturates at 0/255 in the predicted image (pconv has no tanh; an
  unclamped uint8 conversion wraps 260 to 4);
- predict keeps every pixel outside the boxes from the input, whatever the method returns;
- training draws new boxes every epoch (the epoch reaches the dataset).

The other two, GLCIC's local crops and SD's mask dilation, sit beside their fixtures in
test_glcic.py and test_sd.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import VariantConfig, load_variant
from pipeline.data.boxes import boxes_mask
from pipeline.data.competition import read_image
from pipeline.data.dataset import BoxInpaintingDataset
from pipeline.inpainters import pconv
from pipeline.inpainters.base import InpaintBatch, Inpainter
from pipeline.predict import masked_batches, predict_split
from pipeline.train import train

class Overshoot(torch.nn.Module):
    """A generator that answers 1.05 in the boxes and -1.05 elsewhere: just past tanh's range,
    as an unbounded last layer (pconv's) can."""

    def forward(self, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.bool(), 1.05, -1.05).expand_as(filled).contiguous()


def test_a_prediction_past_the_range_saturates_and_never_wraps(competition):
    config = pconv.FAMILY.config(VariantConfig(name="overshoot", method="pconv"))
    inpainter = pconv.PConvInpainter(Overshoot(), config, torch.device("cpu"))
    _, batch = next(masked_batches(competition.val[:2], competition.config.image_size, 2))
    out = inpainter.inpaint(batch)
    assert out.dtype == np.uint8
    assert (out[batch.masks] == 255).all(), "1.05 is brighter than white: 255, not 261 wrapped to 5"
    assert (out[~batch.masks] == 0).all(), "-1.05 is darker than black: 0, not -6 wrapped to 250"


class White(Inpainter):
    """A method that returns a white image, boxes and all."""

    @classmethod
    def from_config(cls, variant):
        return cls()

    @classmethod
    def check_params(cls, variant):
        pass

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        return np.full_like(batch.masked_images, 255)


@pytest.mark.parametrize("split", ["val", "test"])
def test_predictions_take_only_the_box_pixels_from_the_method(competition, split):
    variant = VariantConfig(name="white", method="mean", data=competition.config)
    run = predict_split(variant, competition, split, inpainter=White(), progress=False)
    for record in competition.split(split):
        predicted = read_image(run.folder / f"{record.image_id}.png", 256)
        mask = boxes_mask(record.boxes, 256, 256)
        assert (predicted[mask] == 255).all()
        # outside the boxes: the model's input exactly (the masked copy for val, the test image)
        assert np.array_equal(predicted[~mask], read_image(record.input_path, 256)[~mask]), record.image_id


def test_every_epoch_draws_new_boxes(generic, monkeypatch):
    """Two epochs of a tiny U-Net on 6 photos: each comes with other boxes the second time."""
    for photo in sorted((generic.root / "train").rglob("*.*g"))[8:]:
        photo.unlink()
    path = generic.root.parent.parent / "epochs.yaml"
    path.write_text(yaml.safe_dump({
        "name": "epochs", "method": "pix2pix", "batch_size": 3,
        "params": dict(ngf=8, depth=4, norm="instance", dropout=False, hole_fill="zero", objective="l2",
                       train_batch_size=3, epochs=2, lr=0.001, mixed_precision="no", num_workers=0,
                       max_minutes=0.0, seed=0),
        "data": {"root": str(generic.root), "truth": str(generic.truth), "val_count": 2},
    }))
    draws: list[tuple[int, tuple]] = []  # (image index, its boxes) of every training item, in order
    real_getitem = BoxInpaintingDataset.__getitem__

    def recording(self, index):
        item = real_getitem(self, index)
        if self.records[index].split == "train":
            draws.append((int(item["index"]), tuple(map(tuple, item["boxes"].tolist()))))
        return item

    monkeypatch.setattr(BoxInpaintingDataset, "__getitem__", recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: one thread is as fast and never fights other processes
    try:
        result = train(load_variant(path), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.epochs_done == 2 and len(draws) == 2 * 6
    first, second = dict(draws[:6]), dict(draws[6:])
    assert sorted(first) == sorted(second) == list(range(6))
    same = [i for i in first if first[i] == second[i]]
    assert not same, f"{len(same)} of 6 photos got the same boxes in both epochs"
