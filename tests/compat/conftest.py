import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The compat tests run the analytic model on 3 x 4 tensors: intra-op threads only add hand-off cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
