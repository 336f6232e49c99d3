import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Run these many small tensor operations on one thread: on small shared CPUs, waking a second
    thread for a 256-element op can cost milliseconds (a timing matter only; results are identical)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
