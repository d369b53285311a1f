"""The execution device, chosen in one place for training, trained inpainters and Stable Diffusion."""

import accelerate
import torch

from pipeline.devices import execution_device
from pipeline.inpainters import sd


class ProcessState:
    """A stand-in for accelerate's PartialState that hands out a marked device."""

    device = torch.device("meta")
    started_with: list[bool] = []

    def __init__(self, cpu: bool = False):
        self.started_with.append(cpu)


def test_a_requested_device_is_taken_as_given(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", ProcessState)
    assert execution_device("cpu") == torch.device("cpu")
    assert execution_device("cuda:1") == torch.device("cuda", 1)


def test_auto_is_the_process_device_under_several_processes_else_the_machines(monkeypatch):
    monkeypatch.setattr(accelerate, "PartialState", ProcessState)
    monkeypatch.setenv("WORLD_SIZE", "1")
    alone = execution_device()
    assert alone.type in ("cuda", "mps", "cpu") and alone.type == ("cuda" if torch.cuda.is_available() else alone.type)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert execution_device() == torch.device("meta")
    assert execution_device(per_process=False) == alone  # the trainer's question: what the machine has
    # without cpu=True accelerate makes every process of a CPU launch the main one
    assert ProcessState.started_with[-1] == (alone.type == "cpu")


def test_sd_loads_its_pipeline_where_execution_device_says(monkeypatch):
    """sd asks the same function (its params.device is the `requested`)."""
    seen = []
    monkeypatch.setattr(sd, "execution_device", lambda requested: seen.append(requested) or torch.device("meta"))
    monkeypatch.setattr(sd, "_LOADED", {("m", "", "", "", "auto", "meta", False): "the cached pipeline"})
    assert sd.load_pipeline(sd.SDParams(model="m"), sd.ModelSource("m", True)) == "the cached pipeline"
    assert seen == ["auto"]
