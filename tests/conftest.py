"""Shared fixtures: tiny random LLaVA models built from config (no download), made once per session."""

import socket

import pytest
import torch

from lvprune import LVPrunerConfig, LVPrunerModel
from lvprune.testing import make_batch, tiny_llava

# Tiny models: one thread avoids scheduling overhead that dominates at these sizes on 2 cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def stock():
    """The stock tiny LLaVA (never pruned): the reference."""
    return tiny_llava(seed=0)


@pytest.fixture(scope="session")
def base():
    """An identical copy that tests attach lvprune to (always detached again by the test)."""
    return tiny_llava(seed=0)


@pytest.fixture(scope="session")
def pruner(base):
    torch.manual_seed(1)
    config = LVPrunerConfig.from_base_config(base.config, num_heads=4)
    return LVPrunerModel(config).eval()


@pytest.fixture(scope="session")
def mixed_batch(base):
    """Left-padded batch of 3: one image, two images, no image."""
    return make_batch(base.config, [1, 2, 0], [5, 7, 6], padding_side="left")


def assert_close(actual, expected, atol, what=""):
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"{what} max |Δ| = {diff:.3g} > {atol}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
