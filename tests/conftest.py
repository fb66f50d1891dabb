"""Shared fixtures: a committee trained on the left well of the 2D double well (built once), and each notebook's first
smoke run under papermill (made once per session, read by every test that checks it)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

from advsample.committee import Committee
from advsample.models import MLPCommittee
from advsample.surfaces import double_well_2d
from advsample.train import TrainConfig, split_validation, train_committee

LEFT_WELL = [(-1.5, 0.0), (-1.2, 1.2)]


@pytest.fixture(scope="session")
def surface_2d():
    return double_well_2d()


@pytest.fixture(scope="session")
def left_well_data(surface_2d):
    """128 labeled points of the left well below the barrier (E < 0)."""
    return surface_2d.sample(128, seed=0, max_energy=0.0, region=LEFT_WELL)


@pytest.fixture(scope="session")
def trained_committee(left_well_data):
    """5 MLPs trained on the left well; returns (committee, train, validation)."""
    train, validation = split_validation(left_well_data, 0.1, seed=0)
    committee = Committee(MLPCommittee(5, (64, 64, 64), seed=0))
    train_committee(committee, train, validation, TrainConfig(epochs=1200, progress=False))
    return committee, train, validation


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``smoke_run(stem)`` -> (executed notebook, summary.json as a dict, its folder): the notebook's first Run All
    with ``smoke=True`` under papermill, made on first request and shared by the session's tests (a notebook's own
    test and tests/test_notebooks.py's run-twice test, which runs it again in the same folder)."""
    import json

    from notebook_support import execute

    runs = {}

    def run(stem: str):
        if stem not in runs:
            folder = tmp_path_factory.mktemp(f"smoke_{stem}")
            runs[stem] = (execute(stem, folder, smoke=True), json.loads((folder / "summary.json").read_text()), folder)
        return runs[stem]

    return run
