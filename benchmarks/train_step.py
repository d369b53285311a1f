"""Training-step speed: our pix2pix step against a plain canonical pix2pix, in the same run.

    .venv/bin/python benchmarks/train_step.py            # ~4 minutes on 2 cores (builds the sample first if missing)
    .venv/bin/python benchmarks/train_step.py --quick    # fewer timed steps, no RMSE check

Both sides train the same networks on the same random 256x256 batches: the U-Net-256 (ngf 64,
8 down-samplings, batch norm, dropout) fed the masked image + mask, and the 70x70 PatchGAN
(ndf 64) on (input, candidate) pairs; vanilla GAN + 100 x L1; Adam 2e-4, beta1 0.5.

    reference   written here the plain way: fp32, NCHW, PyTorch defaults, the textbook step
    ours        pipeline.inpainters.pix2pix.Pix2PixStep with the networks of pipeline.inpainters.pix2pix and
                configs/pix2pix.yaml's settings, as `make train VARIANT=pix2pix` runs it: bf16
                autocast (where the CPU has native bf16), channels_last activations, fused Adam

Steps of the two alternate (reference, ours, reference, ...) and the median of each is reported,
so load from other processes hits both alike; read the ratio, not the absolute numbers.

It also times the training data loader alone (decode + augment + boxes + Telea hole fill) to
show the model never waits for data, and, unless --quick, checks that a fixed short run in bf16
reaches a validation RMSE no worse than the same run in fp32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.inpainters import pix2pix as p2p  # noqa: E402
from pipeline.inpainters.fill import fill_holes  # noqa: E402

SIZE = 256


def ensure_sample(cfg=None, **build) -> bool:
    """Build the offline sample competition (what `make sample` builds) where `cfg.root` (default:
    the sample's folder) has none; True if it was built. `build`: build_sample's sizes."""
    from pipeline.config import DataConfig
    from pipeline.data.sample import build_sample

    cfg = cfg or DataConfig()
    if Path(cfg.root).is_dir():
        return False
    print(f"{cfg.root}: no sample competition yet; building it (same as `make sample`)", flush=True)
    build_sample(cfg, **build)
    return True


# ---------------------------------------------------------------------------------------------
# Reference: canonical pix2pix, plainly


class RefUNet(nn.Module):
    """U-Net-256: 8 stride-2 convs down to 1x1, 8 transposed convs up, skips by concatenation."""

    def __init__(self, in_ch: int = 4, out_ch: int = 3, ngf: int = 64):
        super().__init__()
        enc = [in_ch, ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 8]
        self.enc = nn.ModuleList()
        for i in range(8):
            layers = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(enc[i], enc[i + 1], 4, 2, 1, bias=False))
            if 0 < i < 7:
                layers.append(nn.BatchNorm2d(enc[i + 1]))
            self.enc.append(nn.Sequential(*layers))
        self.dec = nn.ModuleList()
        for i in reversed(range(8)):  # i: the encoder level this decoder layer mirrors
            cin = enc[i + 1] if i == 7 else enc[i + 1] * 2
            cout = out_ch if i == 0 else enc[i]
            layers = [nn.ReLU(), nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=i == 0)]
            if i > 0:
                layers.append(nn.BatchNorm2d(cout))
            if 4 <= i <= 6:
                layers.append(nn.Dropout(0.5))
            if i == 0:
                layers.append(nn.Tanh())
            self.dec.append(nn.Sequential(*layers))

    def forward(self, x):
        skips = []
        for layer in self.enc:
            x = layer(x)
            skips.append(x)
        x = self.dec[0](skips[-1])
        for layer, skip in zip(self.dec[1:], reversed(skips[:-1])):
            x = layer(torch.cat([x, skip], 1))
        return x


def ref_patchgan(in_ch: int = 7, ndf: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 8, 1, 4, 1, 1),
    )


class ReferenceStep:
    """The textbook pix2pix iteration: D on real and fake pairs, then G with D frozen."""

    def __init__(self):
        self.G, self.D = RefUNet(), ref_patchgan()
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.bce, self.l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()

    def __call__(self, batch):
        x = torch.cat([batch["model_input"], batch["mask"]], 1)
        real = batch["target"]
        fake = self.G(x)
        for p in self.D.parameters():
            p.requires_grad = True
        self.opt_d.zero_grad()
        pred_fake = self.D(torch.cat([x, fake.detach()], 1))
        pred_real = self.D(torch.cat([x, real], 1))
        loss_d = 0.5 * (self.bce(pred_fake, torch.zeros_like(pred_fake)) + self.bce(pred_real, torch.ones_like(pred_real)))
        loss_d.backward()
        self.opt_d.step()
        for p in self.D.parameters():
            p.requires_grad = False
        self.opt_g.zero_grad()
        pred_fake = self.D(torch.cat([x, fake], 1))
        loss_g = self.bce(pred_fake, torch.ones_like(pred_fake)) + 100.0 * self.l1(fake, real)
        loss_g.backward()
        self.opt_g.step()


# ---------------------------------------------------------------------------------------------
# Ours: the pipeline's step as `make train` builds it


def our_config(precision: str | None = None, channels_last: bool | None = None):
    """configs/pix2pix.yaml's settings (the reports' U-Net-256 recipe), parsed as the trainer does."""
    from pipeline.config import load_variant

    config = p2p.pix2pix_config(load_variant("pix2pix"))
    net, hp = config.network, config.train
    assert (net.ngf, net.depth, net.ndf, net.d_layers, net.norm) == (64, 8, 64, 3, "batch"), "not U-Net-256"
    if precision is not None:
        hp.mixed_precision = precision
    if channels_last is not None:
        hp.channels_last = channels_last
    return config


def our_step(precision: str | None = None, channels_last: bool | None = None):
    """(Pix2PixStep, precision used) built the way pipeline.train builds it."""
    from pipeline.train import _accelerator, _mixed_precision

    config = our_config(precision, channels_last)
    precision, note = _mixed_precision(config.train.mixed_precision)
    if note:
        print(f"note: {note}")
    accelerator = _accelerator(precision)
    nets = p2p.FAMILY.build(config)
    optimizers = p2p.FAMILY.optimizers(config, nets)
    prepared = accelerator.prepare(*nets.values(), *optimizers.values())
    for model in prepared[:2]:
        accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    nets, optimizers = dict(zip(nets, prepared[:2])), dict(zip(optimizers, prepared[2:]))
    return p2p.FAMILY.make_step(config, accelerator, nets, optimizers), precision


# ---------------------------------------------------------------------------------------------


def random_batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1
    mask = torch.zeros(n, 1, SIZE, SIZE)
    mask[:, :, 40:115, 30:105] = 1
    mask[:, :, 140:215, 150:225] = 1
    return {"model_input": target * (1 - mask), "mask": mask, "target": target}


def time_steps(steps: dict, batch_size: int, repeats: int) -> dict[str, float]:
    """images/s of each step function, alternating them; median over `repeats`."""
    batch = random_batch(batch_size)
    for fn in steps.values():  # warm-up: allocations, oneDNN primitive caches
        fn(batch)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - start)
    return {name: batch_size / statistics.median(ts) for name, ts in times.items()}


def loader_rate(workers: int, batch_size: int, batches: int) -> float:
    """images/s of the training DataLoader alone (sample competition, Telea fill, augmentation)."""
    from torch.utils.data import DataLoader

    from pipeline.config import load_variant
    from pipeline.data.competition import load_competition
    from pipeline.data.dataset import AugmentConfig, BoxInpaintingDataset
    from pipeline.train import EpochDataset, EpochSampler, _worker_init

    variant = load_variant("pix2pix-cpu")
    competition = load_competition(variant.data)
    dataset = BoxInpaintingDataset(competition.train, variant.data, AugmentConfig(), partial(fill_holes, how="telea"))
    sampler = EpochSampler(len(dataset), 0)
    loader = DataLoader(EpochDataset(dataset), batch_size=batch_size, sampler=sampler, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, worker_init_fn=_worker_init,
                        prefetch_factor=4 if workers else None)
    images, started, epoch = 0, None, 0
    while images < batches * batch_size:
        sampler.set_epoch(epoch)
        for batch in loader:
            if started is None:  # first batch: worker start-up, not throughput
                started = time.perf_counter()
                continue
            images += batch["target"].shape[0]
            if images >= batches * batch_size:
                break
        epoch += 1
    return images / (time.perf_counter() - started)


def short_run_rmse(precision: str, steps: int, seed: int) -> float:
    """Best validation RMSE of pix2pix-cpu after `steps` steps on the sample at `precision`."""
    from pipeline.config import load_variant
    from pipeline.train import train

    variant = load_variant("pix2pix-cpu")
    variant.name = f"bench-{precision}-{seed}"
    variant.data.root = variant.data.root.resolve()
    variant.data.truth = variant.data.truth.resolve() if variant.data.truth else None
    variant.params.update(mixed_precision=precision, max_minutes=0.0, seed=seed)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # checkpoints/ and runs/ of these throw-away runs
        try:
            result = train(variant, max_steps=steps, progress=False)
        finally:
            os.chdir(cwd)
    return result.best_val_rmse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps; skip the RMSE check")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per side and batch size")
    parser.add_argument("--precision", choices=("bf16", "no"), help="ours: mixed precision (default: the config's)")
    parser.add_argument("--nchw", action="store_true", help="ours: NCHW activations instead of the config's channels_last")
    parser.add_argument("--rmse-steps", type=int, default=120, help="steps of each short run")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 6)
    os.chdir(REPO)  # the configs' data.root (data/sample) is relative to the repository
    ensure_sample()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    torch.manual_seed(0)
    reference = ReferenceStep()
    ours, precision = our_step(args.precision, False if args.nchw else None)
    print(f"ours: configs/pix2pix.yaml's step: precision {precision}, "
          f"{'channels_last' if ours.channels_last else 'NCHW'} activations, fused Adam")
    rates = {}
    for batch_size in (1, 4):
        rates[batch_size] = time_steps({"reference": reference, "ours": ours}, batch_size, repeats)
        ref, our = rates[batch_size]["reference"], rates[batch_size]["ours"]
        print(f"train step, batch {batch_size}: reference {ref:.2f} images/s, ours {our:.2f} images/s, "
              f"ratio {our / ref:.2f}x  (median of {repeats})", flush=True)
    del reference, ours

    loader = loader_rate(workers=2, batch_size=4, batches=12 if args.quick else 30)
    step = rates[4]["ours"]
    print(f"data loader (2 workers: decode + augment + boxes + Telea fill): {loader:.1f} images/s, "
          f"{loader / step:.1f}x our batch-4 step ({step:.2f} images/s)", flush=True)

    if not args.quick:  # two seeds each: the spread between seeds is the noise to judge bf16 against
        rmse = {p: [short_run_rmse(p, args.rmse_steps, seed) for seed in (0, 1)] for p in ("no", "bf16")}
        fp32, bf16 = statistics.mean(rmse["no"]), statistics.mean(rmse["bf16"])
        spread = max(rmse["no"]) - min(rmse["no"])  # what changing only the seed does to fp32
        print(f"pix2pix-cpu after {args.rmse_steps} steps on the sample, seeds 0 and 1: validation RMSE "
              f"fp32 {' '.join(f'{v:.4f}' for v in rmse['no'])} (mean {fp32:.4f}), "
              f"bf16 {' '.join(f'{v:.4f}' for v in rmse['bf16'])} (mean {bf16:.4f}); bf16 - fp32 = "
              f"{bf16 - fp32:+.4f}, fp32 seed-to-seed spread {spread:.4f}: "
              + ("bf16 no worse than fp32" if bf16 - fp32 <= spread else "bf16 WORSE than fp32"))


if __name__ == "__main__":
    main()
