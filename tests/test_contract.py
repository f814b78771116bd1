"""lvprune.core.contract: the names lvprune reads from transformers, checked against the installed release."""

import inspect

import pytest
import torch
from conftest import assert_close

import lvprune
from lvprune import PLPHPPress
from lvprune.core import contract
from lvprune.core.pruned_cache import PrunedCache


def test_cache_keyword_is_the_one_forward_takes(base):
    parameters = inspect.signature(type(base).forward).parameters
    name = contract.cache_kwarg(base)
    assert name in parameters
    # The newest name wins where a release takes both.
    assert name == next(n for n in contract.CACHE_KWARGS if n in parameters)


def test_pop_cache_takes_either_name_and_refuses_two_caches():
    cache = object()
    for name in contract.CACHE_KWARGS:
        kwargs = {name: cache, "use_cache": True}
        assert contract.pop_cache(kwargs) is cache and kwargs == {"use_cache": True}
    assert contract.pop_cache({"cache": None, "past_key_values": None}) is None
    with pytest.raises(ValueError, match="one name"):
        contract.pop_cache({"cache": object(), "past_key_values": object()})


def test_generate_fills_the_pruned_cache_with_nothing_pruned(stock, base, mixed_batch):
    """The cache generate() hands over is replaced by lvprune's, and that one is what the layers fill."""
    with torch.no_grad():
        reference = contract.output_cache(stock(**mixed_batch, use_cache=True))
        with lvprune.pruning(base, press=None):
            out = base(**mixed_batch, use_cache=True)
            stats = base.pruning_stats
    cache = contract.output_cache(out)
    assert isinstance(cache, PrunedCache)
    for mine, theirs in zip(contract.cache_layers(cache), contract.cache_layers(reference)):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    assert stats.kv_cache_bytes == stats.kv_cache_bytes_unpruned == cache.nbytes() > 0


def decode(model, batch, cache_name, steps=3):
    """Greedy decoding by hand, the cache passed back as `cache_name`: logits [steps + 1, B, vocab]."""
    out = model(**batch, use_cache=True)
    cache, mask, logits = contract.output_cache(out), batch["attention_mask"], [out.logits[:, -1]]
    for _ in range(steps):
        token = logits[-1].argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        out = model(input_ids=token, attention_mask=mask, use_cache=True, **{cache_name: cache})
        cache = contract.output_cache(out)
        logits.append(out.logits[:, -1])
    return torch.stack(logits)


@pytest.mark.parametrize("name", contract.CACHE_KWARGS)
def test_pruned_decode_by_hand_takes_either_keyword(stock, base, mixed_batch, name):
    """A hand-written decode loop may pass the cache under the current or the deprecated name: lvprune takes
    both on every release and hands its cache on under the name the installed model reads."""
    with torch.no_grad():
        reference = decode(stock, mixed_batch, contract.cache_kwarg(stock))
        # r=1 keeps every vision token: PLPHP runs its whole path yet must change nothing.
        with lvprune.pruning(base, press=PLPHPPress(r=1.0, delta_r=0.0, start_layer=0)):
            pruned = decode(base, mixed_batch, name)
            assert base.pruning_stats.kv_cache_bytes == base.pruning_stats.kv_cache_bytes_unpruned > 0
    assert_close(pruned, reference, 1e-5, "decode logits")


def test_a_supported_family_configured_with_sliding_windows_is_refused(base):
    """Gemma 3 and unknown families are refused by the backbone registry (test_methods_families.py); a family lvprune
    supports is refused too when its text config asks for windows lvprune's masks would not draw."""
    from lvprune.families.tiny import tiny_llava

    windowed = tiny_llava(seed=0)
    text = windowed.config.text_config
    text.use_sliding_window, text.sliding_window = True, 16  # as a Mistral or Qwen2 text model may have it
    with pytest.raises(ValueError, match="sliding-window attention"):
        lvprune.Pruning(windowed, press=PLPHPPress(start_layer=0))
    assert lvprune.core.contract.unsupported_attention(base) is None
