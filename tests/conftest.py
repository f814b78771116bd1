"""Shared fixtures: tiny random LLaVA models built from config (no download), made once per session."""

import socket

import pytest
import torch

import lvprune
from lvprune import LVPrunerConfig, LVPrunerModel, LVPruningForTraining
from lvprune.testing import IMAGE_TOKEN_ID, make_batch, tiny_llava

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


@pytest.fixture()
def pruned(base):
    """Attach with `pruned(pruner, **kwargs)`; detached after the test whatever happens."""
    handles = []

    def attach(pruner=None, **kwargs):
        handles.append(lvprune.Pruning(base, pruner, **kwargs).attach())
        return base

    yield attach
    for handle in handles:
        handle.detach()


def assert_close(actual, expected, atol, what=""):
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"{what} max |Δ| = {diff:.3g} > {atol}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generated_with_masked_reference(base, pruner, batch, ratios, steps):
    """Greedy decoding by re-running the masked training forward (eval mode) on prompt + answer so far.

    The answer tokens are labelled, so they are never decision keys: decisions stay those of the prompt.
    Positions follow the attention mask, as `generate` numbers them.
    """
    config = LVPrunerModel(pruner.config.__class__(**{**pruner.config.to_dict(), "keep_ratios": ratios}))
    config.load_state_dict(pruner.state_dict())
    trainer = LVPruningForTraining(base, config).eval()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    first_logits = None
    try:
        for _ in range(steps):
            labels = torch.full_like(ids, -100)
            labels[:, batch["input_ids"].shape[1]:] = ids[:, batch["input_ids"].shape[1]:]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = trainer(input_ids=ids, attention_mask=mask, pixel_values=batch.get("pixel_values"),
                                 labels=labels, position_ids=positions).logits[:, -1]
            first_logits = logits if first_logits is None else first_logits
            next_ids = logits.index_fill(-1, torch.tensor([IMAGE_TOKEN_ID]), float("-inf")).argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_ids], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    finally:
        trainer.unwrap()
    return first_logits, ids
