"""PLPHP's vision-attention profile against the stock model's own attention weights."""

import torch
from conftest import assert_close

from lvprune.families.tiny import tiny_llava
from lvprune.methods.plphp import suggest_thresholds, vision_attention_profile


def test_profile_equals_stock_eager_attention(base, mixed_batch):
    profile = vision_attention_profile(base, [mixed_batch])  # samples with images only: 2 of 3
    eager = tiny_llava(seed=0)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = eager(**mixed_batch, output_attentions=True).attentions  # per layer [B, H, N, N]
    vision = (mixed_batch["input_ids"] == base.config.image_token_id).float()
    expected = torch.stack([(a[:, :, -1, :] * vision[:, None]).sum(-1).mean(-1) for a in attentions], dim=1)
    assert profile.shape == (2, 4)
    assert_close(profile, expected[:2], 1e-5, "v_l")


def test_thresholds_split_the_profile_into_thirds():
    profile = torch.arange(30, dtype=torch.float).reshape(3, 10) / 30
    suggestion = suggest_thresholds(profile, start_layer=2)
    values = profile[:, 2:].flatten()
    share_low = (values <= suggestion["beta"]).float().mean().item()
    share_high = (values >= suggestion["alpha"]).float().mean().item()
    assert abs(share_low - 1 / 3) < 0.05 and abs(share_high - 1 / 3) < 0.05
    assert suggestion["beta"] < suggestion["alpha"]
