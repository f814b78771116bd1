"""The mask-based training forward (METHOD §1) against stock-transformers references."""

import copy

import pytest
import torch
from conftest import assert_close

from lvprune import LVPrunerConfig, LVPrunerModel, LVPruningForTraining
from lvprune.families.tiny import make_batch, tiny_llava


@pytest.fixture(autouse=True)
def back_to_eval(base):
    """`.train()` on a trainer switches the shared session `base` to training mode: switch it back so later
    test files see the mode the fixture promises."""
    yield
    base.eval()


@pytest.fixture()
def trainer(base, pruner):
    """A trainer around a copy of the session pruner: tests here take optimizer steps on it."""
    model = LVPruningForTraining(base, copy.deepcopy(pruner))
    yield model
    model.detach()


def always_keep(pruner) -> LVPrunerModel:
    """A copy of `pruner` whose decisions are "keep" whatever the Gumbel noise."""
    forced = LVPrunerModel(pruner.config)
    forced.load_state_dict(pruner.state_dict())
    for stage in forced.stages:
        stage.out_proj.weight.data.zero_()
        stage.out_proj.bias.data = torch.tensor([100.0, -100.0])
    return forced


def labels_for(batch, answer_tokens=2):
    """Supervise the last `answer_tokens` tokens of each sample."""
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, -answer_tokens:] = batch["input_ids"][:, -answer_tokens:]
    return labels


def test_forced_keep_equals_stock_sdpa(base, stock, pruner, mixed_batch):
    trainer = LVPruningForTraining(base, always_keep(pruner)).train()
    try:
        out = trainer(**mixed_batch, labels=labels_for(mixed_batch))
    finally:
        trainer.detach()
    with torch.no_grad():
        reference = stock(**mixed_batch)
    valid = mixed_batch["attention_mask"].bool()
    assert torch.all(torch.stack(out.decisions) == 1)
    assert_close(out.logits[valid], reference.logits[valid], 1e-5, "forced-keep logits")


def masked_reference(stock, batch, decisions, after_layers):
    """Stock decoder layers run one by one with a 4D boolean mask per layer that blocks pruned vision keys.

    decisions: accumulated keep [B, N] per stage; layers after stage s (0-based index >= after_layers[s])
    use decisions[s]. Everything else (embedding, vision tower, rotary, layers, SDPA) is transformers' own.
    """
    llava, lm = stock.model, stock.model.language_model
    ids, valid = batch["input_ids"], batch["attention_mask"].bool()
    embeds = lm.embed_tokens(ids)
    features = llava.get_image_features(pixel_values=batch["pixel_values"], return_dict=True).pooler_output
    mask = (ids == stock.config.image_token_id)[..., None].expand_as(embeds)
    embeds = embeds.masked_scatter(mask, torch.cat(features).to(embeds.dtype))
    positions = torch.arange(ids.shape[1])[None]
    rotary = lm.rotary_emb(embeds, positions)
    n = ids.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    self_only = torch.eye(n, dtype=torch.bool)
    hidden = embeds
    for index, layer in enumerate(lm.layers):
        keep = torch.ones_like(ids, dtype=torch.bool)
        for stage, after in enumerate(after_layers):
            if index >= after:
                keep = decisions[stage].bool()
        allowed = (causal & (valid & keep)[:, None, :]) | self_only
        hidden = layer(hidden, attention_mask=allowed[:, None], position_embeddings=rotary)
    return stock.lm_head(lm.norm(hidden))


def test_hard_decisions_equal_stock_with_blocking_4d_masks(trainer, stock, mixed_batch):
    torch.manual_seed(0)
    trainer.train()
    out = trainer(**mixed_batch, labels=labels_for(mixed_batch))
    vision = mixed_batch["input_ids"] == stock.config.image_token_id
    assert 0 < torch.stack(out.decisions)[:, vision].mean() < 1, "the test needs some pruned and some kept tokens"
    with torch.no_grad():
        reference = masked_reference(stock, mixed_batch, out.decisions, trainer.pruner.config.after_layers)
    text = mixed_batch["attention_mask"].bool() & ~vision
    assert_close(out.logits[text], reference[text], 1e-4, "text logits")


def test_gradients_reach_only_the_pruner_and_base_is_untouched(trainer, mixed_batch):
    before = {name: t.clone() for name, t in trainer.base_model.state_dict().items()}
    trainer.train()
    optimizer = torch.optim.AdamW([p for p in trainer.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    out = trainer(**mixed_batch, labels=labels_for(mixed_batch))
    out.loss.backward()
    for name, param in trainer.pruner.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reached {name}"
    assert all(not p.requires_grad and p.grad is None for p in trainer.base_model.parameters())
    optimizer.step()
    for name, tensor in trainer.base_model.state_dict().items():
        assert torch.equal(tensor, before[name]), f"base tensor {name} changed"


@pytest.mark.parametrize("kind", ["mse", "huber"])
def test_keep_fractions_and_ratio_loss_match_hand_computation(base, pruner, mixed_batch, kind):
    config = LVPrunerConfig(**{**pruner.config.to_dict(), "ratio_loss": kind})
    own = LVPrunerModel(config)
    own.load_state_dict(pruner.state_dict())
    trainer = LVPruningForTraining(base, own).train()
    try:
        torch.manual_seed(3)
        out = trainer(**mixed_batch, labels=labels_for(mixed_batch))
    finally:
        trainer.detach()
    vision = mixed_batch["input_ids"] == base.config.image_token_id
    has_vision = vision.any(-1)
    per_sample = torch.stack([(d * vision).sum(-1) / vision.sum(-1) for d in out.decisions])  # [S, B]
    assert_close(out.keep_fractions, per_sample[:, has_vision].mean(-1), 1e-6, "keep fractions")
    targets = torch.tensor(config.keep_ratios)[:, None].expand(-1, int(has_vision.sum()))
    errors = per_sample[:, has_vision] - targets
    if kind == "mse":
        expected = (errors**2).mean()
    else:
        expected = torch.where(errors.abs() <= 0.5, 0.5 * errors**2, 0.5 * (errors.abs() - 0.25)).mean()
    assert_close(out.ratio_loss, expected, 1e-6, "ratio loss")
    assert_close(out.loss, out.causal_loss + config.lambda_ratio * out.ratio_loss, 1e-5, "total loss")
    for earlier, later in zip(out.decisions, out.decisions[1:]):
        assert torch.all(later <= earlier), "a pruned token came back"


def with_answer(batch, answer):
    """Append `answer` [B, A] to every (left-padded) prompt; labels supervise exactly those tokens."""
    out = dict(batch)
    out["input_ids"] = torch.cat([batch["input_ids"], answer], dim=1)
    out["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(answer)], dim=1)
    labels = torch.full_like(out["input_ids"], -100)
    labels[:, -answer.shape[1]:] = answer
    return out, labels


def test_answer_tokens_are_never_decision_keys(trainer, mixed_batch):
    """Changing the supervised answer tokens must not change any decision."""
    trainer.eval()
    first, labels = with_answer(mixed_batch, torch.tensor([[10, 11, 12]] * 3))
    second, other_labels = with_answer(mixed_batch, torch.tensor([[40, 50, 60]] * 3))
    decisions = trainer(**first, labels=labels).decisions
    other = trainer(**second, labels=other_labels).decisions
    assert all(torch.equal(a, b) for a, b in zip(decisions, other))
    unlabelled = trainer(**second).decisions
    assert any(not torch.equal(a, b) for a, b in zip(decisions, unlabelled)), "answer tokens must matter as keys"


def test_eval_decisions_are_topk_with_config_ratios(trainer, mixed_batch):
    trainer.eval()
    out = trainer(**mixed_batch)
    vision = mixed_batch["input_ids"] == trainer.base_model.config.image_token_id
    for ratio, decision in zip(trainer.pruner.config.keep_ratios, out.decisions):
        kept = (decision * vision).sum(-1)
        assert torch.equal(kept, torch.round(vision.sum(-1) * ratio))


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_mixed_batch_equals_each_sample_alone(trainer, base, padding_side):
    trainer.eval()
    images, lengths = [0, 1, 2], [6, 5, 7]
    batch = make_batch(base.config, images, lengths, padding_side=padding_side, seed=4)
    out = trainer(**batch)
    first_image = 0
    for b, n_images in enumerate(images):
        valid = batch["attention_mask"][b].bool()
        alone = {"input_ids": batch["input_ids"][b, valid][None], "attention_mask": torch.ones(1, int(valid.sum()))}
        if n_images:
            alone["pixel_values"] = batch["pixel_values"][first_image : first_image + n_images]
        first_image += n_images
        single = trainer(**alone)
        assert_close(out.logits[b, valid], single.logits[0], 1e-4, f"sample {b} logits")
        for decision, single_decision in zip(out.decisions, single.decisions):
            assert torch.equal(decision[b, valid], single_decision[0])


def test_activation_checkpointing_is_refused(pruner):
    base = tiny_llava(seed=0)
    # Newer releases name it activation checkpointing; the old name is a deprecated alias there.
    enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
    enable()
    with pytest.raises(ValueError, match="checkpointing"):
        LVPruningForTraining(base, pruner)


def test_masked_softmax_renormalises_when_a_pruned_key_dominates():
    """A pruned key that outscores every kept key must not shrink the row: the output is removal's softmax
    over the kept keys (stock SDPA with a blocking mask), and the decisions' gradient stays finite."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from lvprune.core.attention import masked_softmax_attention

    torch.manual_seed(0)
    batch, heads, n, dim = 2, 2, 6, 4
    query, key, value = (torch.randn(batch, heads, n, dim) for _ in range(3))
    key[:, :, 1] = query[:, :, -1] * 40  # key 1 dominates the last query's row by far (Δ ≈ 40·|q|²/√d)
    keep = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    order = torch.arange(n).expand(batch, n)
    allowed = (order[:, None, :] <= order[:, :, None])[:, None]  # causal [B, 1, Q, K]
    module = SimpleNamespace(num_key_value_groups=1)
    out = masked_softmax_attention(module, query, key, value, allowed, keep, order, dim**-0.5)
    blocked = allowed & (keep.detach().bool()[:, None, None, :] | torch.eye(n, dtype=torch.bool))
    reference = F.scaled_dot_product_attention(query, key, value, attn_mask=blocked).transpose(1, 2)
    assert_close(out, reference, 1e-5, "masked softmax vs removal")
    out.sum().backward()
    assert torch.isfinite(keep.grad).all()
    assert keep.grad.abs().max() < 1e3, "a dominating pruned key must not blow up the decisions' gradient"
