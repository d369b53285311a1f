"""The pieces the trainable families share (blocks.py, losses.py): the same numbers and the same
checkpoint keys as when they lived in pix2pix.py."""

import hashlib

import pytest
import torch

from pipeline.config import VariantConfig
from pipeline.inpainters import glcic, pconv
from pipeline.inpainters import pix2pix as p2p
from pipeline.inpainters.blocks import residual_on_fill
from pipeline.inpainters.losses import GANLoss

# sha256 (first 16 hex digits) of "<network>.<key>:<shape>;..." of each family's networks, taken
# before the blocks left pix2pix.py: a checkpoint saved then loads now
STATE_DICT_KEYS = [
    (p2p.FAMILY, dict(ngf=8, depth=4, ndf=8), "3edcaf37dd15af7a"),
    (p2p.FAMILY, dict(ngf=8, depth=8, ndf=8, norm="instance", objective="l2"), "37c891c4bb6d2fe3"),
    (pconv.FAMILY, dict(width=8, max_width=32, depth=4), "cca953d30e3e10f0"),
    (glcic.FAMILY, dict(width=4, d_width=4, epochs=30), "4e7aef0381d255d7"),
]


@pytest.mark.parametrize("family, params, digest", STATE_DICT_KEYS, ids=["pix2pix", "pix2pix-l2", "pconv", "glcic"])
def test_checkpoint_keys_are_unchanged(family, params, digest):
    nets = family.build(family.config(VariantConfig(name="t", method=family.method, params=params)))
    text = ";".join(f"{n}.{k}:{tuple(t.shape)}" for n, net in nets.items() for k, t in net.state_dict().items())
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == digest


@pytest.mark.parametrize("kind, real, value", [
    ("vanilla", True, 1.3718575239181519), ("vanilla", False, 1.453624963760376),
    ("lsgan", True, 10.293364524841309), ("lsgan", False, 9.456900596618652),
])
def test_gan_loss_gives_the_old_functions_numbers(kind, real, value):
    """The values pix2pix's gan_loss (and glcic's bce, the vanilla one) gave for these logits."""
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 30, 30) * 3
    loss = GANLoss(kind)
    assert loss(logits, real).item() == value
    assert loss(logits.bfloat16(), real).dtype == torch.float32  # computed in fp32 whatever the logits
    assert not loss.state_dict()  # the label buffers are not saved with anything
    with pytest.raises(ValueError, match="gan_loss 'hinge' is not one of vanilla, lsgan"):
        GANLoss("hinge")


def test_residual_on_fill_keeps_the_fill_at_zero_and_stays_in_range():
    fill = torch.linspace(-1, 1, 50).view(1, 1, 5, 10).expand(2, 3, 5, 10)
    assert torch.allclose(residual_on_fill(fill, torch.zeros_like(fill)), fill.clamp(-0.999, 0.999), atol=1e-6)
    assert residual_on_fill(fill, torch.full_like(fill, 100.0)).max() <= 1.0
