import os
import random

import numpy as np
import pytest
import torch
from hypothesis import settings

from diffode._utils import default_dtype

# The one place the suite's thread count is set. Tiny tensors dominate the suite; with two intra-op
# threads some kernels (softmax, searchsorted) take milliseconds instead of microseconds on small
# shared machines. Results do not depend on it.
torch.set_num_threads(1)

# Property tests are reproducible: the same examples on every run and machine (derandomized, drawn
# from a seed fixed by each test), and no example database, so a past failure is never replayed from
# a .hypothesis/ folder that a run left behind. To explore with fresh random examples locally, run
# with HYPOTHESIS_PROFILE=explore (a failure then prints the @reproduce_failure line to pin it).
settings.register_profile("diffode", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "diffode"))


@pytest.fixture
def float64_default():
    """Run with float64 as torch's default dtype (the reference DPM-Solver builds its time grids in it)."""
    with default_dtype(torch.float64):
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
