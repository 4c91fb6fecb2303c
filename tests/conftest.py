import pytest
import torch

from convslim.data import load_data


@pytest.fixture(scope="session")
def digits():
    return load_data("digits", seed=0)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny models; avoids oversubscribing 2 shared cores
