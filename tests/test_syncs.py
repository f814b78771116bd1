"""Host synchronisations: a pruned decode step has no more than the stock model's, a pruned prefill at most one
more per LVPruning stage and per PLPHP layer. Counted as `aten::_local_scalar_dense` (`.item()`, `bool()`, ...)
in torch's profiler, plus `Tensor.tolist()` calls (a device-to-host copy on a GPU, which the profiler does not
name), so a GPU never stalls on them."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import lvprune
from lvprune import PLPHPPress
from lvprune.core.contract import cache_kwarg, output_cache
from lvprune.families.tiny import make_batch


def count_syncs(fn, monkeypatch) -> int:
    copies = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: copies.append(1) or tolist(self))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense") + len(copies)


@torch.no_grad()
def prefill_and_decode_syncs(model, batch, monkeypatch) -> tuple[int, int]:
    out = model(**batch, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    step = dict(input_ids=token, attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(token)], 1),
                use_cache=True, **{cache_kwarg(model): output_cache(out)})
    prefill = count_syncs(lambda: model(**batch, use_cache=True), monkeypatch)
    return prefill, count_syncs(lambda: model(**step), monkeypatch)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("method", ["plphp", "lvpruning", "both"])
def test_pruned_calls_add_at_most_one_sync_per_stage_and_plphp_layer(stock, base, pruner, monkeypatch, padded, method):
    images, lengths = ([1, 2, 0], [5, 7, 6]) if padded else ([1, 1], [7, 7])
    batch = make_batch(base.config, images, lengths, seed=8)
    plphp = PLPHPPress(r=0.4, delta_r=0.3, start_layer=1)
    kwargs = {"plphp": dict(press=plphp), "lvpruning": dict(pruner=pruner), "both": dict(pruner=pruner, press=plphp)}
    stock_prefill, stock_decode = prefill_and_decode_syncs(stock, batch, monkeypatch)
    with lvprune.pruning(base, **kwargs[method]):
        prefill, decode = prefill_and_decode_syncs(base, batch, monkeypatch)
    stages = pruner.config.num_stages if "pruner" in kwargs[method] else 0
    plphp_layers = len(lvprune.core.contract.decoder_layers(base)) - plphp.start_layer if "press" in kwargs[method] else 0
    assert decode <= stock_decode, f"decode: {decode} syncs, stock {stock_decode}"
    assert prefill <= stock_prefill + stages + plphp_layers, f"prefill: {prefill} syncs, stock {stock_prefill}"
