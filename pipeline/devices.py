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
        return partial_state().device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def partial_state():
    """accelerate's PartialState of this launch (torchrun, accelerate launch). On a machine without
    a GPU it is started with cpu=True: without it accelerate starts the process group yet treats
    every CPU process as the only one (each the main process, each doing all the work)."""
    from accelerate import PartialState

    return PartialState(cpu=execution_device(per_process=False).type == "cpu")
