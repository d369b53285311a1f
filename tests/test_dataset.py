"""Training samples: after augmentation the masked pixels are exactly the (moved) boxes."""

import cv2
import numpy as np
import pytest
import torch

from pipeline.data.boxes import boxes_mask
from pipeline.data.competition import read_image
from pipeline.data.dataset import AugmentConfig, BoxInpaintingDataset, to_image, to_tensor


@pytest.fixture
def dataset(competition):
    # strong colour jitter, always flipped: the mask must still be exactly the boxes
    return BoxInpaintingDataset(competition.train, competition.config,
                                AugmentConfig(jitter=20, flip=1.0, colour=1.0), seed=3)


def test_masked_pixels_are_exactly_the_boxes_after_augmentation(dataset):
    for index in range(len(dataset)):
        item = dataset[index]
        mask = item["mask"][0].numpy().astype(bool)
        boxes = item["boxes"].numpy()
        assert boxes.shape == (2, 4) and (boxes[:, 2:] == 75).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + 75 <= 256).all()
        expected = np.zeros((256, 256), bool)
        for x, y, w, h in boxes:
            expected[y : y + h, x : x + w] = True
        assert (mask == expected).all(), f"item {index}: mask differs from its boxes"
        # outside the boxes the input is the (augmented) target; inside it is blank
        masked, target = item["model_input"], item["target"]
        assert torch.equal(masked[:, ~torch.from_numpy(mask)], target[:, ~torch.from_numpy(mask)])
        assert (masked[:, torch.from_numpy(mask)] == -1.0).all()


def test_augmentation_moves_the_photo_with_its_boxes(competition):
    """Flip-only augmentation: the target is the mirrored photo and the boxes moved with it."""
    plain = BoxInpaintingDataset(competition.train, competition.config, None, seed=5)
    flipped = BoxInpaintingDataset(competition.train, competition.config,
                                   AugmentConfig(jitter=0, flip=1.0, colour=0.0), seed=5)
    image, mask, boxes, _ = plain.sample(0)
    f_image, f_mask, f_boxes, _ = flipped.sample(0)
    assert (f_image == image[:, ::-1]).all()
    assert (f_mask == mask[:, ::-1]).all()
    assert sorted((256 - b.x - b.w, b.y) for b in boxes) == sorted((b.x, b.y) for b in f_boxes)


def test_draws_depend_on_seed_epoch_and_index_only(dataset, competition):
    first = dataset[4]
    again = BoxInpaintingDataset(competition.train, competition.config,
                                 AugmentConfig(jitter=20, flip=1.0, colour=1.0), seed=3)[4]
    assert all(torch.equal(first[k], again[k]) for k in first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[4]["boxes"], first["boxes"])


def test_validation_records_keep_their_fixed_boxes(competition):
    val = BoxInpaintingDataset(competition.val, competition.config, AugmentConfig())
    for index, record in enumerate(competition.val):
        item = val[index]
        expected = boxes_mask(record.boxes, 256, 256)
        assert (item["mask"][0].numpy().astype(bool) == expected).all()


def test_hole_fill_only_changes_the_hole(competition):
    fill = lambda image, mask: np.where(mask[..., None], 200, image).astype(np.uint8)  # noqa: E731
    item = BoxInpaintingDataset(competition.train, competition.config, hole_fill=fill)[0]
    mask = item["mask"][0].bool()
    assert torch.allclose(item["model_input"][:, mask], torch.tensor(200 / 127.5 - 1))
    assert torch.equal(item["model_input"][:, ~mask], item["target"][:, ~mask])


def test_validation_input_is_the_competitions_masked_jpeg(competition):
    """The model sees the real masked copy (compression ringing outside the boxes), the target is
    the unmasked photo."""
    item = BoxInpaintingDataset(competition.val, competition.config)[0]
    record = competition.val[0]
    mask = item["mask"][0].bool()
    masked_copy = to_tensor(read_image(record.masked_path))
    assert torch.equal(item["model_input"][:, ~mask], masked_copy[:, ~mask])
    assert torch.equal(item["target"], to_tensor(read_image(record.path)))
    assert (item["model_input"][:, mask] == -1.0).all()
    ring = torch.from_numpy(cv2.dilate(mask.numpy().astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)) & ~mask
    assert (item["model_input"][:, ring] != item["target"][:, ring]).any()  # the artefacts are there


def test_jpeg_augmentation_compresses_the_input_only(competition):
    """Masked, then compressed, then blanked again: the input differs from the target outside the
    boxes (the artefacts), the target stays the clean photo, the boxes stay exactly blank."""
    plain = BoxInpaintingDataset(competition.train, competition.config, AugmentConfig(jitter=0, flip=0, colour=0), seed=1)
    jpeg = BoxInpaintingDataset(competition.train, competition.config,
                                AugmentConfig(jitter=0, flip=0, colour=0, jpeg=1.0, jpeg_quality=(30, 40)), seed=1)
    a, b = plain[2], jpeg[2]
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["mask"], b["mask"])
    mask = b["mask"][0].bool()
    assert (b["model_input"][:, mask] == -1.0).all()
    error = (b["model_input"][:, ~mask] - b["target"][:, ~mask]).abs().mean()
    assert 0.005 < float(error) < 0.2
    assert torch.equal(b["model_input"], jpeg[2]["model_input"])  # seeded: the same draw again


def test_tensor_round_trip_is_exact():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert (to_image(to_tensor(image)) == image).all()


def test_empty_training_set_is_an_error(competition):
    with pytest.raises(ValueError, match="training folder empty"):
        BoxInpaintingDataset([], competition.config)
