"""Random streams in checkpoints: each process saves and restores its own device's, keyed by rank,
so a run resumes on fewer (or more) GPUs than it was saved on; and the deterministic switch.

No GPU here: torch.cuda's get/set_rng_state are replaced by recorders, which is all the per-device
choice needs (which device is asked, which state goes where).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from pipeline import train
from pipeline.train import deterministic_kernels, own_rng_state, rng_state, set_rng_state


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's RNG calls, recorded: get returns a state naming its device."""
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device="cuda": calls.append(("get", str(device))) or torch.tensor([int(device.index or 0)]))
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": calls.append(("set", str(device), int(state[0]))))
    return calls


def test_the_cpu_streams_round_trip():
    state = rng_state(torch.device("cpu"))
    assert "cuda" not in state  # a CPU process has no GPU stream to save
    first = draws()
    set_rng_state(state, torch.device("cpu"))
    assert draws() == first


def test_each_process_saves_its_own_gpu_stream_only(fake_cuda):
    assert rng_state(torch.device("cuda", 1))["cuda"].item() == 1
    assert fake_cuda == [("get", "cuda:1")]  # not every visible GPU's (get_rng_state_all)


def test_a_run_saved_on_two_gpus_resumes_on_one(fake_cuda):
    saved = {rank: {**rng_state(torch.device("cpu")), "cuda": torch.tensor([10 + rank])} for rank in (0, 1)}
    own, note = own_rng_state(saved, rank=0, processes=1)
    assert own is saved[0] and "saved by 2 process(es), this run has 1" in note
    set_rng_state(own, torch.device("cuda", 0))
    assert fake_cuda == [("set", "cuda:0", 10)]  # rank 0's stream onto the one GPU there is


def test_more_processes_than_saved_keep_their_seeded_streams_and_equal_counts_say_nothing():
    saved = {0: {"torch": "rank 0"}, 1: {"torch": "rank 1"}}
    assert own_rng_state(saved, 1, 2) == (saved[1], None)
    own, note = own_rng_state(saved, rank=2, processes=3)
    assert own is None and "ranks 0..1 continue" in note and "ranks 2..2 start from the seed" in note
    assert own_rng_state([{"torch": "old"}], 0, 1) == ({"torch": "old"}, None)  # older checkpoints: a list


def test_an_older_checkpoint_with_every_gpu_stream_restores_the_own_device_one(fake_cuda):
    state = {**rng_state(torch.device("cpu")), "cuda": [torch.tensor([20]), torch.tensor([21])]}
    set_rng_state(state, torch.device("cuda", 1))
    set_rng_state(state, torch.device("cpu"))  # resumed on a CPU: no GPU stream to restore
    assert fake_cuda == [("set", "cuda:1", 21)]


@pytest.fixture
def restore_determinism(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


def test_the_deterministic_switch_sets_the_flags_and_off_restores_autotuning(restore_determinism):
    deterministic_kernels(True)
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    deterministic_kernels(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark


def test_train_sets_the_switch_from_the_config_before_loading_data(restore_determinism, workspace, monkeypatch):
    from tests.test_train import write_variant
    from pipeline.config import load_variant

    class Stop(Exception):
        pass

    def load_data(run, progress):  # the point where CUDA may first start (the process state)
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                     os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        raise Stop

    seen = []
    monkeypatch.setattr(train, "load_data", load_data)
    with pytest.raises(Stop):
        train.train(load_variant(write_variant(workspace, "det", deterministic=True)), progress=False)
    assert seen == [(True, False, ":4096:8")]
