"""Random and FastV baselines: the same kept counts as LVPruning, and FastV's ranking against eager attention."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from lvprune import LVPrunerConfig, LVPrunerModel, pruning
from lvprune.bench.methods import schedule
from lvprune.core.contract import output_cache
from lvprune.families.tiny import make_batch, tiny_llava
from lvprune.methods.fastv import FastVPruner
from lvprune.methods.random_pruning import RandomPruner

RATIOS = schedule(0.5)  # [0.5, 0.3, 0.1]


@pytest.fixture(scope="module")
def model():
    return tiny_llava(seed=0, image_size=24)  # 36 vision tokens per image, 4 decoder layers


@pytest.fixture(scope="module")
def batch(model):
    return make_batch(model.config, images_per_sample=[1, 1, 2], text_lengths=[9, 14, 6], seed=1)


@pytest.fixture(scope="module")
def pruner(model):
    torch.manual_seed(0)
    return LVPrunerModel(LVPrunerConfig.from_base_config(model.config, keep_ratios=RATIOS)).eval()


def prefill_state(model, pruner, batch, **kwargs):
    """The pruning state of one prefill of `batch` under `pruner`."""
    with pruning(model, pruner, **kwargs), torch.no_grad():
        out = model(**batch, use_cache=True)
    return output_cache(out).state, model.pruning_stats


def kept_positions(state, layer: int = -1) -> list[set[int]]:
    """Per sample, the prompt positions of the vision tokens a layer still holds."""
    slots = state.slots[layer]
    return [set(slots.order[b, 0][slots.vision[b, 0] & slots.valid[b, 0]].tolist()) for b in range(slots.order.shape[0])]


def test_random_keeps_lvpruning_counts_in_every_layer(model, batch, pruner):
    _, lv_stats = prefill_state(model, pruner, batch)
    _, random_stats = prefill_state(model, RandomPruner.like(pruner, seed=3), batch)
    n_vision = (batch["input_ids"] == model.config.image_token_id).sum(-1)
    expected_last = torch.round(n_vision.double() * RATIOS[-1]).long().tolist()
    assert [s.vision_tokens for s in random_stats.layers] == [s.vision_tokens for s in lv_stats.layers]
    assert random_stats.layers[-1].vision_tokens == expected_last
    assert random_stats.kv_cache_bytes == lv_stats.kv_cache_bytes


def test_random_is_seeded_and_differs_across_seeds(model, batch, pruner):
    first = kept_positions(prefill_state(model, RandomPruner.like(pruner, seed=3), batch)[0])
    again = kept_positions(prefill_state(model, RandomPruner.like(pruner, seed=3), batch)[0])
    other = kept_positions(prefill_state(model, RandomPruner.like(pruner, seed=4), batch)[0])
    assert first == again and first != other


def test_fastv_keeps_lvpruning_final_count(model, batch, pruner):
    _, lv_stats = prefill_state(model, pruner, batch)
    _, fastv_stats = prefill_state(model, FastVPruner(model.config, after_layer=2, keep_ratio=RATIOS[-1]), batch)
    n_vision = (batch["input_ids"] == model.config.image_token_id).sum(-1).tolist()
    assert [s.vision_tokens for s in fastv_stats.layers] == [n_vision, n_vision] + [lv_stats.layers[-1].vision_tokens] * 2


@pytest.mark.parametrize("after_layer", [1, 2, 3])
def test_fastv_ranking_equals_stock_eager_attention(model, batch, after_layer):
    """Kept tokens = top-k of the last prompt token's head-averaged attention in layer K of the stock model."""
    eager = LlavaForConditionalGeneration(model.config).eval()
    eager.load_state_dict(model.state_dict())
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = eager(**batch, output_attentions=True).attentions[after_layer - 1]  # [B, H, N, N]
    scores = attentions[:, :, -1, :].mean(1)  # [B, N]
    fastv = FastVPruner(model.config, after_layer=after_layer, keep_ratio=0.25)
    state, _ = prefill_state(model, fastv, batch)
    vision = batch["input_ids"] == model.config.image_token_id
    for b, kept in enumerate(kept_positions(state)):
        positions = vision[b].nonzero()[:, 0]
        k = round(0.25 * len(positions))
        top = positions[scores[b, positions].topk(k).indices]
        assert kept == set(top.tolist())


def test_fastv_refuses_to_run_without_attention(model):
    fastv = FastVPruner(model.config, after_layer=2)
    with pytest.raises(RuntimeError, match="attention"):
        fastv(0, torch.zeros(1, 3, 64), torch.zeros(1, 2, 64), torch.ones(1, 2, dtype=torch.bool))
