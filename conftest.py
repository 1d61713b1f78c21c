"""Shared pytest set-up for the tests and the doctests."""

import os
from collections.abc import Iterator

import pytest
import torch

# One intra-op thread per test process: with pytest-xdist on 2 cores, more threads only
# contend (tiny matmuls get orders of magnitude slower).
torch.set_num_threads(int(os.environ.get("LIGHTLY_HMLC_TEST_THREADS", "1")))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread, restored afterwards (for tests that run code which sets its own).

    Tiny models gain little from a second thread, and on a shared CPU (``pytest -n 2``
    on two cores) a second thread per process makes every step wait for the others.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
