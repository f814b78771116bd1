"""Shared fixtures: tiny random LLaVA models built from config (no download), made once per session."""

import copy
import os
import socket
import tempfile

# The data checks of the tests' files are kept apart from the user's datasets cache (lvprune.data.check); set
# before datasets is imported, and inherited by the training scripts the tests launch.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="lvprune-tests-datasets-"))

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import lvprune
from lvprune import LVPrunerConfig, LVPrunerModel, LVPruningForTraining
from lvprune.families import backbone_for
from lvprune.families.tiny import make_batch, tiny_llava

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


PLACEHOLDERS = (3, 4)  # the tiny configs' image and video ids: a re-run prompt must not hold generated ones


def generated_with_masked_reference(base, pruner, batch, ratios, steps):
    """Greedy decoding by re-running the masked training forward (eval mode) on prompt + answer so far.

    The answer tokens are labelled, so they are never decision keys: decisions stay those of the prompt.
    Positions follow the attention mask, as `generate` numbers them (families with 3-D positions compute theirs
    from the per-token inputs, extended over the answer as text).
    """
    backbone = backbone_for(base.config)
    config = pruner.config.__class__(**{**pruner.config.to_dict(), "keep_ratios": ratios})
    if isinstance(pruner, LVPrunerModel):
        at_ratios = LVPrunerModel(config)
        at_ratios.load_state_dict(pruner.state_dict())
    else:  # a stage pruner without weights (lvprune.stage)
        at_ratios = copy.deepcopy(pruner)
        at_ratios.config = config
    trainer = LVPruningForTraining(base, at_ratios).eval()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    first_logits = None
    try:
        for _ in range(steps):
            labels = torch.full_like(ids, -100)
            labels[:, batch["input_ids"].shape[1]:] = ids[:, batch["input_ids"].shape[1]:]
            grown = {k: _extend(v, ids.shape[1]) if k in backbone.token_inputs else v for k, v in extra.items()}
            if not backbone.token_inputs:
                grown["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = trainer(input_ids=ids, attention_mask=mask, labels=labels, **grown).logits[:, -1]
            first_logits = logits if first_logits is None else first_logits
            next_ids = logits.index_fill(-1, torch.tensor(PLACEHOLDERS), float("-inf")).argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_ids], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    finally:
        trainer.detach()
    return first_logits, ids


def _extend(per_token: torch.Tensor, width: int) -> torch.Tensor:
    """A per-token input [B, N] padded with zeros (text) on the right to `width`."""
    return torch.nn.functional.pad(per_token, (0, width - per_token.shape[1]))


def register_per_head_reference(keep_sets):
    """A stock-SDPA attention whose decode steps mask, per layer and KV head, the keys PLPHP dropped."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        keep = keep_sets.get(module.layer_idx)
        if query.shape[2] != 1 or keep is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        allowed = torch.ones(key.shape[0], key.shape[1], 1, key.shape[2], dtype=torch.bool)
        allowed[..., : keep.shape[-1]] = keep[:, :, None, :]
        if attention_mask is not None:
            allowed = allowed & attention_mask[..., -key.shape[2]:]
        allowed = allowed.repeat_interleave(module.num_key_value_groups, dim=1)
        return sdpa_attention_forward(module, query, key, value, allowed, **kwargs)

    AttentionInterface.register("per_head_reference", attention)
    AttentionMaskInterface.register("per_head_reference", sdpa_mask)


def per_head_keep_sets(state, prompt_length: int, start_layer: int) -> dict:
    """layer -> [B, kv_heads, prompt_length] bool: the prompt slots each head of a pressed cache still holds."""
    keep_sets = {}
    for layer, slots in enumerate(state.slots):
        if layer >= start_layer:
            prompt = slots.order < prompt_length
            keep = torch.zeros(slots.order.shape[0], slots.order.shape[1], prompt_length, dtype=torch.bool)
            keep.scatter_(-1, torch.where(prompt & slots.valid, slots.order, 0), prompt & slots.valid)
            keep[..., 0] |= ((slots.order == 0) & slots.valid).any(-1)
            keep_sets[layer] = keep
    return keep_sets


def assert_equals_per_head_reference(out, reference_model, batch, start_layer: int, **generate) -> None:
    """`out`, a pressed model's `generate(**batch, **generate, output_logits=True, return_dict_in_generate=True)`,
    equals `reference_model` (the same weights, unpruned) decoding with each head's dropped prompt slots masked out
    (`register_per_head_reference`): the same tokens, and logits to 1e-4 at every step."""
    keep_sets = per_head_keep_sets(out.past_key_values.state, batch["input_ids"].shape[1], start_layer)
    assert any(not keep.all() for keep in keep_sets.values()), "the press must have dropped something"
    register_per_head_reference(keep_sets)
    implementation = reference_model.config.get_text_config()._attn_implementation
    reference_model.set_attn_implementation({"text_config": "per_head_reference"})
    try:
        reference = reference_model.generate(**batch, **generate, output_logits=True, return_dict_in_generate=True)
    finally:
        reference_model.set_attn_implementation({"text_config": implementation})
    assert torch.equal(out.sequences, reference.sequences)
    for step, (ours, theirs) in enumerate(zip(out.logits, reference.logits)):
        assert_close(ours, theirs, 1e-4, f"decode step {step} logits")


def world2_conversations(folder, count: int, seed: int = 7) -> list:
    """`count` fresh 3-turn conversations of world 2 at the shipped second base's image size (world2_bench's test
    split: tasks balanced), written into `folder` once."""
    from lvprune_shapes.bench import image_size
    from lvprune_shapes.reference.world2 import SHIPPED_DIR
    from lvprune_shapes.world2_bench import World2BenchConfig, test_conversations

    config = World2BenchConfig(base=str(SHIPPED_DIR), conversations=count, seed=seed, cache_dir=str(folder))
    return test_conversations(config, image_size(SHIPPED_DIR))
