import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import sepfl
from sepfl.datasets import make_faces

# "default" keeps the suite quick; SEPFL_HYPOTHESIS_PROFILE=fuzz is the long fuzzing run.
settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("SEPFL_HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config, items):
    if sepfl.has_cuda():
        return
    skip = pytest.mark.skip(reason="needs the CUDA module sepfl._cuda and a usable GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds barrier waits on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces(request):
    """The synthetic face set of ``make_faces(**MAKE_FACES)``, ``MAKE_FACES`` a dict the test
    module defines: each file picks the size its checks need."""
    return make_faces(**request.module.MAKE_FACES)
