import random

import numpy as np
import pytest
import torch


# The one place the suite's thread count is set. Tiny tensors dominate the suite; with two intra-op
# threads some kernels (softmax, searchsorted) take milliseconds instead of microseconds on small
# shared machines. Results do not depend on it.
torch.set_num_threads(1)


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
