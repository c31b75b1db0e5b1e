"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def world():
    """A simulated tabletop (seed 0), one per test module: building it costs about a second."""
    from vla_bringup.sim.world import TabletopWorld
    w = TabletopWorld(seed=0)
    yield w
    w.close()


@pytest.fixture(scope="module")
def torch_one_thread():
    # Two OpenMP threads on two shared cores spin against other work: 100x slower, not faster.
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
