"""Where a model runs: the one place that chooses the execution device."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def execution_device(requested: str = "auto", per_process: bool = True) -> torch.device:
    """`requested` ("cuda:1", "cpu", ...) as a torch.device, or for "auto": under several processes
    (`accelerate launch`, torchrun: WORLD_SIZE > 1) and `per_process`, the device accelerate gave
    this process (cuda:<local rank>); else the GPU if there is one, Apple's MPS, or the CPU.

    per_process=False answers "which kind of device does this machine offer" without starting
    accelerate's process state (the trainer's Accelerator starts it itself).
    """
    import torch

    if requested != "auto":
        return torch.device(requested)
    if per_process and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState().device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
