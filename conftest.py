"""Shared pytest set-up for the tests and the doctests."""

import os

import torch

# One intra-op thread per test process: with pytest-xdist on 2 cores, more threads only
# contend (tiny matmuls get orders of magnitude slower).
torch.set_num_threads(int(os.environ.get("LIGHTLY_HMLC_TEST_THREADS", "1")))
