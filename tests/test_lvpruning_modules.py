"""The decision modules' cross-attention (paper eq. 3) against stock SDPA."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close

from lvprune import LVPrunerConfig
from lvprune.methods.lvpruning.modules import CrossAttentionBlock


def sdpa_block(block, queries, text, text_mask):
    """Eq. 3 and the FFN with `F.scaled_dot_product_attention` and a boolean key mask."""
    q = block.q_proj(queries)
    k, v = block._heads(block.k_proj(text)), block._heads(block.v_proj(text))
    attended = F.scaled_dot_product_attention(block._heads(q), k, v, attn_mask=text_mask[:, None, None, :])
    out = attended.transpose(1, 2).flatten(2) + q
    return out + block.ffn(out)


def test_cross_attention_equals_sdpa_and_a_sample_without_text_attends_to_nothing():
    torch.manual_seed(0)
    config = LVPrunerConfig(hidden_size=32, num_heads=4, num_hidden_layers=2, after_layers=[1], keep_ratios=[0.5])
    block = CrossAttentionBlock(config)
    queries, text = torch.randn(3, 7, 32), torch.randn(3, 5, 32)
    text_mask = torch.tensor([[True] * 5, [False, True, True, False, True], [False] * 5])
    queries.requires_grad_(True)
    out = block(queries, text, text_mask)
    assert_close(out[:2], sdpa_block(block, queries[:2], text[:2], text_mask[:2]), 1e-5, "with text")
    q = block.q_proj(queries[2:])
    assert_close(out[2:], q + block.ffn(q), 1e-6, "without text: O = Q")
    out.sum().backward()
    assert queries.grad.isfinite().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cross_attention_in_half_precision_stays_finite_without_text(dtype):
    torch.manual_seed(0)
    config = LVPrunerConfig(hidden_size=32, num_heads=4, num_hidden_layers=2, after_layers=[1], keep_ratios=[0.5])
    block = CrossAttentionBlock(config)
    queries, text = torch.randn(2, 7, 32) * 30, torch.randn(2, 5, 32) * 30  # large scores: overflow territory
    text_mask = torch.tensor([[True, True, False, True, True], [False] * 5])
    with torch.no_grad():
        expected = block(queries, text, text_mask)
        out = block.to(dtype)(queries.to(dtype), text.to(dtype), text_mask)
    assert out.isfinite().all()
    q = block.q_proj(queries[1:].to(dtype))
    assert torch.equal(out[1:], q + block.ffn(q)), "without text: O = Q"
    assert_close(out.float(), expected, 0.1 * expected.abs().max().item(), f"{dtype} against fp32")


# ------------------------------------------------------------------ loading refuses what is not a pruner


def test_from_pretrained_refuses_what_is_not_a_complete_pruner(tmp_path, pruner, stock):
    from safetensors.torch import load_file, save_file

    from lvprune import LVPrunerModel

    stock.save_pretrained(tmp_path / "llava")
    with pytest.raises(ValueError, match="'llava' model, not an lvprune pruner"):
        LVPrunerModel.from_pretrained(tmp_path / "llava")
    pruner.save_pretrained(tmp_path / "pruner")
    loaded = LVPrunerModel.from_pretrained(tmp_path / "pruner")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), pruner.state_dict().values()))
    tensors = load_file(tmp_path / "pruner" / "model.safetensors")
    for name, edit in (("missing", lambda t: t.pop(next(iter(t)))), ("extra", lambda t: t.update(x=torch.ones(1)))):
        edited = dict(tensors)
        edit(edited)
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text((tmp_path / "pruner" / "config.json").read_text())
        save_file(edited, tmp_path / name / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match="not a complete lvprune pruner"):
            LVPrunerModel.from_pretrained(tmp_path / name)


def test_config_sizes_come_from_the_base():
    with pytest.raises(ValueError, match="from_base_config"):
        LVPrunerConfig()
    with pytest.raises(ValueError, match="hidden_size"):
        LVPrunerConfig(num_hidden_layers=32)
