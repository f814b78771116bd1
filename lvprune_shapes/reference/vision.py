"""Stage 1: train the vision tower alone to see what the questions ask about.

Linear heads on the tower's last hidden states (what LLaVA projects, CLS dropped) predict, per patch, the
colour of the object under it (or background) and its grid cell. A tower trained from scratch through the
language model alone barely learns within a CPU budget; with these dense labels it reads colour and cell
from each patch within a few hundred steps. The heads are thrown away afterwards. (How many objects share a
patch's colour is not asked: a 2-layer tower does not learn to count within the budget; the language model
counts grid cells instead, see `training.reference_loss`.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

HEAD_CLASSES = (7, 10)  # background + 6 colours; background + 9 cells


def patch_losses(tower, heads, pixels: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Cross-entropies [colour on every patch, colour on object patches, cell on object patches].

    pixels [B, 3, H, W]; labels [B, 2, V] (see `targets.patch_labels`). Small
    objects cover a few percent of the patches, so colour is also scored on object patches alone: scored on
    every patch only, a patch half covered by an object is cheaper to call background.
    """
    hidden = tower(pixel_values=pixels).last_hidden_state[:, 1:]  # [B, V, C]
    on_object = labels[:, 0] > 0
    colour, cell = heads[0](hidden), heads[1](hidden)
    return [F.cross_entropy(colour.flatten(0, 1), labels[:, 0].flatten()),
            F.cross_entropy(colour[on_object], labels[:, 0][on_object]),
            F.cross_entropy(cell[on_object], labels[:, 1][on_object])]


def pretrain_vision_tower(tower, pixels: torch.Tensor, labels: torch.Tensor, *, steps: int, batch_size: int,
                          learning_rate: float, seed: int, progress: bool = True) -> list[float]:
    """Train `tower` (a CLIP vision model) on per-patch labels; returns the loss of each step.

    pixels [n, 3, H, W]; labels [n, 2, V]. Batches are drawn with replacement from a `seed`ed generator.
    """
    torch.manual_seed(seed)
    heads = torch.nn.ModuleList(torch.nn.Linear(tower.config.hidden_size, n) for n in HEAD_CLASSES)
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(30, steps // 5), steps)
    generator = torch.Generator().manual_seed(seed)
    tower.train()
    history = []
    for _ in tqdm(range(steps), desc="vision tower", disable=not progress):
        index = torch.randint(len(pixels), (batch_size,), generator=generator)
        loss = sum(patch_losses(tower, heads, pixels[index], labels[index]))
        loss.backward()
        optimizer.step(), schedule.step(), optimizer.zero_grad()
        history.append(loss.item())
    return history
