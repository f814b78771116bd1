"""PLPHP with `queries="expected"`: its scores are kvpress ExpectedAttentionPress's on the stock model's layers
(the slots' ranking is kvpress's own `score`, the layer class's attention that score before the value norms), with
the Gaussian from every row (`query_rows="all"`) or from the text rows (the default: kvpress's statistics over
those rows), a left-padded batch scores each sample as it scores alone, and the rotary rule it relies on holds in
every family."""

from dataclasses import dataclass

import pytest
import torch

import lvprune
from lvprune import PLPHPPress
from lvprune.core.attention import SINKS
from lvprune.core.contract import attention_module, decoder_layers, rotary_embedding, rotate
from lvprune.families import supported
from lvprune.families.tiny import family_batch, make_batch, tiny_llava, tiny_model

RECORDED = []


@dataclass(frozen=True)
class Recording(PLPHPPress):
    """PLPHP recording each pressed layer's (scores, ranking, slots) in `RECORDED`."""

    def select(self, scores, slots, last, ranking=None):
        RECORDED.append((scores, ranking, slots))
        return super().select(scores, slots, last, ranking)


def recorded(model, batch, **press):
    """Per pressed layer (every layer, keeping everything): the press's scores, ranking and slots."""
    RECORDED.clear()
    with torch.no_grad(), lvprune.pruning(model, press=Recording(start_layer=0, queries="expected", **press)):
        model(**batch, use_cache=True)
    return list(RECORDED)


@pytest.fixture(scope="module")
def sharp():
    """The tiny LLaVA with its query and key projections scaled up: a random tiny model attends almost uniformly,
    which would hide a wrong rotation or covariance term inside the tolerance."""
    model = tiny_llava(seed=0)
    with torch.no_grad():
        for layer in decoder_layers(model):
            attention_module(layer).q_proj.weight.mul_(8)
            attention_module(layer).k_proj.weight.mul_(8)
    return model


def test_the_ranking_is_kvpress_expected_attention(sharp):
    kvpress = pytest.importorskip("kvpress")
    stock = sharp
    single = make_batch(sharp.config, [2], [8], seed=11)
    layers = recorded(sharp, single, r=1.0, delta_r=0.0, query_rows="all")
    reference = kvpress.ExpectedAttentionPress()  # n_sink 4, 512 positions to come, covariance, value norms
    assert reference.n_sink == SINKS
    assert_kvpress_scores(reference, stock, single, layers)


def assert_kvpress_scores(reference, stock, batch, layers):
    """Each recorded layer's ranking is `reference.score` on the stock model's layer inputs; its scores are that
    ranking before the value norms, a distribution over the non-sink keys; sinks rank first, earliest first."""
    from test_kvpress import stock_layer_inputs

    from lvprune.methods.kvpress import _WithRotary

    inputs = stock_layer_inputs(stock, batch)
    for layer, (scores, ranking, slots) in enumerate(layers):
        hidden, kwargs, keys, values = inputs[layer]
        module = _WithRotary(attention_module(decoder_layers(stock)[layer]), rotary_embedding(stock))
        expected = reference.score(module, hidden, keys, values, None, kwargs)
        torch.testing.assert_close(ranking[..., SINKS:], expected[..., SINKS:].float(), rtol=1e-4, atol=1e-6)
        # The class's attention is that score before the value norms: a distribution over the non-sink keys.
        torch.testing.assert_close(scores[..., SINKS:] * values[..., SINKS:, :].norm(dim=-1), ranking[..., SINKS:],
                                   rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(scores.sum(-1), torch.ones_like(scores.sum(-1)))
        sinks = ranking[..., :SINKS]  # ranked first, earliest first
        assert (sinks[..., :-1] > sinks[..., 1:]).all() and (sinks[..., -1:] > ranking[..., SINKS:]).all()
        assert (scores[..., :SINKS] == 0).all()
        assert scores[..., SINKS:].amax() > 3 * scores[..., SINKS:].amin()  # far from uniform: the test can tell


def test_text_rows_are_kvpress_statistics_over_the_text_rows(sharp):
    """`query_rows="text"` (the default): kvpress's Gaussian (its own pre-RoPE query projection, mean, covariance
    and rotation averaged from the prompt's length on) over the text rows beyond the sinks; the rest its `score`."""
    kvpress = pytest.importorskip("kvpress")
    from kvpress.utils import get_prerope_query_states

    single = make_batch(sharp.config, [2], [8], seed=11)
    text = single["input_ids"][0] != sharp.config.image_token_id
    text[:SINKS] = False
    assert 2 <= text.sum() < (~text).sum() - SINKS  # a few text rows among many vision rows

    class TextRows(kvpress.ExpectedAttentionPress):
        def get_query_statistics(self, module, hidden_states):
            queries = get_prerope_query_states(module, hidden_states[:, text])  # [1, Hq, T, D]
            mean = queries.mean(2, keepdim=True)
            centred = queries - mean
            covariance = torch.einsum("bnsi,bnsj->bnij", centred, centred) / queries.shape[2]
            return self.apply_avg_rope(module, mean.squeeze(2), covariance, hidden_states.shape[1])

    layers = recorded(sharp, single, r=1.0, delta_r=0.0)
    assert_kvpress_scores(TextRows(), sharp, single, layers)
    every_row = recorded(sharp, single, r=1.0, delta_r=0.0, query_rows="all")
    # Far outside the tolerance above: the test tells the two statistics apart.
    assert min((a[1] - b[1])[..., SINKS:].abs().max() / b[1][..., SINKS:].abs().max()
               for a, b in zip(layers, every_row)) > 0.1


def test_an_image_only_prefix_models_the_queries_to_come_on_every_row(sharp):
    """A prompt with no text row beyond its sinks (text, then its image: a prefix cache made before the question)
    falls back to every row: the text default scores as `query_rows="all"`."""
    prefix = image_only_prefix(sharp.config)
    for (scores, ranking, _), (scores_all, ranking_all, _) in zip(
            recorded(sharp, prefix, r=1.0, delta_r=0.0), recorded(sharp, prefix, r=1.0, delta_r=0.0, query_rows="all")):
        torch.testing.assert_close(ranking, ranking_all)
        torch.testing.assert_close(scores, scores_all)


def test_a_padded_batch_scores_each_sample_as_alone(base, mixed_batch):
    """mixed_batch: left-padded, one image, two images, none; each sample alone holds its own images."""
    together = recorded(base, mixed_batch, r=1.0, delta_r=0.0)
    real = mixed_batch["attention_mask"].bool()
    first_image = [0, 1, 3, 3]
    for b in range(real.shape[0]):
        alone = {name: mixed_batch[name][b:b + 1][:, real[b]] for name in ("input_ids", "attention_mask")}
        if first_image[b + 1] > first_image[b]:
            alone["pixel_values"] = mixed_batch["pixel_values"][first_image[b]:first_image[b + 1]]
        for (scores, ranking, slots), (scores_1, ranking_1, _) in zip(together, recorded(base, alone, r=1.0,
                                                                                          delta_r=0.0)):
            rows = slots.valid[b, 0]
            torch.testing.assert_close(scores[b][:, rows], scores_1[0], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(ranking[b][:, rows], ranking_1[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_type", sorted(supported()))
def test_every_family_rotates_its_keys_by_the_tables_its_layers_receive(model_type):
    """The rule `expected_scores` undoes and composes (`contract.rotate`): each layer's cached key is its
    projection rotated by the rotary tables the layer was called with (Qwen2-VL's M-RoPE included)."""
    model = tiny_model(model_type)
    batch = family_batch(model, [1, 2, 0], [5, 7, 6])
    captured = {}
    layer = decoder_layers(model)[1]
    module = attention_module(layer)
    handle = module.register_forward_pre_hook(lambda m, args, kwargs: captured.update(kwargs), with_kwargs=True)
    try:
        with torch.no_grad():
            cache = model(**batch, use_cache=True).past_key_values
    finally:
        handle.remove()
    cos, sin = captured["position_embeddings"]
    with torch.no_grad():
        projected = module.k_proj(captured["hidden_states"]).unflatten(-1, (-1, module.head_dim)).transpose(1, 2)
        if hasattr(module, "k_norm"):
            projected = module.k_norm(projected)
    torch.testing.assert_close(rotate(projected, cos[:, None], sin[:, None]), cache.layers[1].keys)
    unit = (cos.square() + sin.square()).sqrt()
    torch.testing.assert_close(rotate(cache.layers[1].keys, (cos / unit)[:, None], -(sin / unit)[:, None]),
                               projected * unit[:, None], rtol=1e-4, atol=1e-5)


def test_gathered_statistics_are_the_text_rows_queries_and_rank_as_kvpress_stats_press(sharp, tmp_path):
    """`query_statistics`: per layer and query head, the mean and covariance of the text rows' queries before RoPE
    (beyond each prompt's sinks) over every calibration prompt, re-derived with kvpress's own pre-RoPE projection;
    a press given them ranks as kvpress's ExpectedAttentionStatsPress given the same; they survive a save."""
    kvpress = pytest.importorskip("kvpress")
    from kvpress.utils import get_prerope_query_states
    from test_kvpress import stock_layer_inputs

    prompts = [make_batch(sharp.config, [1], [9], seed=seed) for seed in (1, 2, 3)]
    stats = lvprune.query_statistics(sharp, prompts)
    per_layer = {}
    for prompt in prompts:
        text = prompt["input_ids"][0] != sharp.config.image_token_id
        text[:SINKS] = False
        for layer, (hidden, _, _, _) in stock_layer_inputs(sharp, prompt).items():
            module = attention_module(decoder_layers(sharp)[layer])
            per_layer.setdefault(layer, []).append(get_prerope_query_states(module, hidden[:, text])[0])
    assert stats.rows == sum(int((p["input_ids"][0] != sharp.config.image_token_id)[SINKS:].sum()) for p in prompts)
    for layer, queries in per_layer.items():
        queries = torch.cat(queries, dim=1).double()  # [Hq, rows, D]
        mean = queries.mean(1)
        centred = queries - mean[:, None]
        covariance = centred.transpose(1, 2) @ centred / queries.shape[1]
        torch.testing.assert_close(stats.mean[layer], mean.float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats.covariance[layer], covariance.float(), rtol=1e-4, atol=1e-4)

    stats_press = getattr(kvpress, "ExpectedAttentionStatsPress", None)
    if stats_press is None:
        pytest.skip("this kvpress has no ExpectedAttentionStatsPress")
    reference = stats_press()
    reference.mu, reference.cov = stats.mean, stats.covariance
    single = make_batch(sharp.config, [2], [8], seed=11)
    layers = recorded(sharp, single, r=1.0, delta_r=0.0, statistics=stats)
    assert_kvpress_scores(reference, sharp, single, layers)
    prompt_fit = recorded(sharp, single, r=1.0, delta_r=0.0)
    assert min((a[1] - b[1])[..., SINKS:].abs().max() / b[1][..., SINKS:].abs().max()
               for a, b in zip(layers, prompt_fit)) > 0.1  # not the prompt's own fit

    stats.save(tmp_path / "queries.safetensors")
    loaded = lvprune.QueryStatistics.load(tmp_path / "queries.safetensors")
    assert loaded.rows == stats.rows
    torch.testing.assert_close(loaded.mean, stats.mean, rtol=0, atol=0)
    torch.testing.assert_close(loaded.covariance, stats.covariance, rtol=0, atol=0)
    from lvprune.methods.plphp import PLPHPOptions

    press = PLPHPOptions(plphp_statistics=str(tmp_path / "queries.safetensors")).plphp_press()
    torch.testing.assert_close(press.query_gaussian(1)[1], stats.covariance[1], rtol=0, atol=0)


def image_only_prefix(config, seed=5):
    """Three text tokens, then an image: no text row beyond the sinks (a prefix cache made before the question)."""
    batch = make_batch(config, [1], [3], seed=seed)
    ids = batch["input_ids"][0]
    image = ids == config.image_token_id
    return dict(batch, input_ids=torch.cat([ids[~image], ids[image]])[None])


def test_statistics_need_the_expected_ranking_the_model_they_were_gathered_on_and_text_rows(sharp):
    with pytest.raises(ValueError, match="no text rows beyond the first 4"):
        lvprune.query_statistics(sharp, [image_only_prefix(sharp.config)])  # no fallback to the vision rows
    stats = lvprune.query_statistics(sharp, [make_batch(sharp.config, [1], [9], seed=1)])
    with pytest.raises(ValueError, match="queries='expected'"):
        PLPHPPress(queries="last", statistics=stats)
    with pytest.raises(ValueError, match="hold 2 decoder layers, not layer 2"):
        lvprune.QueryStatistics(stats.mean[:2], stats.covariance[:2], stats.rows).layer(2)
