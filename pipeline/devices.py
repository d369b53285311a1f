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


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU of compute capability 8.0 or more
    (Ampere on: A100, A10, L4, RTX 30xx; the T4 is 7.5, the V100 7.0, the P100 6.0 and emulate it,
    slower than fp32), a ROCm GPU, or a CPU with avx512_bf16 or AMX (through oneDNN)."""
    import torch

    if device.type == "cuda":
        return bool(torch.version.hip) or torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def describe(device: torch.device) -> str:
    """'Tesla T4 (compute capability 7.5)', 'the CPU', ...: the device in a message."""
    import torch

    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    return f"the {device.type.upper()}"


def partial_state():
    """accelerate's PartialState of this launch (torchrun, accelerate launch). On a machine without
    a GPU it is started with cpu=True: without it accelerate starts the process group yet treats
    every CPU process as the only one (each the main process, each doing all the work)."""
    from accelerate import PartialState

    return PartialState(cpu=execution_device(per_process=False).type == "cpu")
