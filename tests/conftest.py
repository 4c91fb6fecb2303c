import pytest
import torch

from convslim.data import load_data


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
if torch.cuda.is_available():
    import convslim
    convslim.deterministic()   # tests that move a model to CUDA themselves compare results bit for bit too


@pytest.fixture(params=DEVICES)
def device(request):
    """Run the test on the CPU and, where a GPU is present, again on CUDA: the same suite proves
    both paths (a model and everything made for it stay on its device)."""
    return request.param


def on(model, device):
    """True when every parameter and buffer of `model` lives on `device` ("cpu" or "cuda")."""
    return all(t.device.type == device for t in [*model.parameters(), *model.buffers()])


@pytest.fixture(scope="session")
def digits():
    return load_data("digits", seed=0)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny models; avoids oversubscribing 2 shared cores
