"""Prediction split across processes, on CPU without real processes: threads play the ranks.

Each thread gets a process state with accelerate's interface (its rank, a shared barrier for
wait_for_everyone, and accelerate's own split_between_processes), and runs predict_split as a
process of `accelerate launch` would. The merged folder must equal a single-process run.
"""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager

import numpy as np
import pytest
from accelerate import PartialState

from pipeline.data.competition import CompetitionError, read_image
from pipeline.inpainters.classical import MeanFill
from pipeline.predict import SingleProcess, predict_split
from tests.conftest import variant


class ThreadRank:
    """Rank `index` of `count`: what predict_split uses of accelerate's PartialState."""

    def __init__(self, index: int, count: int, barrier: threading.Barrier):
        self.process_index, self.num_processes, self.barrier = index, count, barrier
        self.is_main_process = index == 0

    def wait_for_everyone(self) -> None:
        self.barrier.wait(timeout=60)

    @contextmanager
    def split_between_processes(self, items):
        with PartialState.split_between_processes(self, items) as mine:  # accelerate's split
            yield mine


class Recording(MeanFill):
    def __init__(self):
        self.seen: dict[str, list[str]] = {}

    def inpaint(self, batch):
        self.seen.setdefault(threading.current_thread().name, []).extend(batch.image_ids)
        return super().inpaint(batch)


def run_ranks(count, v, competition, inpainter, root):
    barrier, runs, errors = threading.Barrier(count), {}, []

    def rank(i):
        try:
            runs[i] = predict_split(v, competition, "test", inpainter, root=root, progress=False,
                                    state=ThreadRank(i, count, barrier))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(i,), name=f"rank{i}") for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return runs


@pytest.mark.parametrize("count", [2, 3, 5])
def test_ranks_split_in_order_and_merge_to_the_single_process_result(workspace, competition, count):
    v = variant("mean", workspace)
    v.batch_size = 2
    single = predict_split(v, competition, "test", MeanFill(), root=workspace / "single", progress=False,
                           state=SingleProcess())
    inpainter = Recording()
    runs = run_ranks(count, v, competition, inpainter, workspace / "multi")
    ids = [r.image_id for r in competition.test]
    shards = [inpainter.seen.get(f"rank{i}", []) for i in range(count)]
    assert sum(shards, []) == ids  # contiguous shards, in record order, each record once
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    folder = runs[0].folder
    assert all(run.folder == folder and run.images == len(ids) for run in runs.values())
    for record in competition.test:
        assert np.array_equal(read_image(folder / f"{record.image_id}.png"),
                              read_image(single.folder / f"{record.image_id}.png"))
    meta = json.loads((folder / "run.json").read_text())
    assert meta["images"] == len(ids) and meta["processes"] == count
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{i}.png" for i in ids] + ["run.json"])
    assert not folder.with_name(folder.name + ".partial").exists()


def test_a_missing_shard_output_fails_the_merge(workspace, competition, monkeypatch):
    import pipeline.predict as predict

    real, lost = predict.write_image, competition.test[-1].image_id
    previous = predict.prediction_dir("mean", "test", competition, workspace / "multi")
    previous.mkdir(parents=True)
    (previous / "kept.png").write_bytes(b"an earlier run")
    monkeypatch.setattr(predict, "write_image", lambda path, image: path.stem == lost or real(path, image))
    with pytest.raises(CompetitionError, match=f"1 prediction\\(s\\) missing.*first {re.escape(lost)}"):
        run_ranks(2, variant("mean", workspace), competition, MeanFill(), workspace / "multi")
    assert sorted(p.name for p in previous.iterdir()) == ["kept.png"]  # the previous folder is never replaced
