"""The frozen base of a run: any supported family (`lvprune.families`) through the Auto classes, with its own
processor and a chat template that marks the answers for the loss."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from lvprune.families import Backbone, backbone_for
from lvprune.families.llava import CHAT_TEMPLATE as LLAVA_TEMPLATE


class UnusableBase(Exception):
    """The base cannot be trained on as given (its family, its processor, its chat template); says what to do."""


def load_base(config) -> tuple[str, torch.nn.Module, object, Backbone]:
    """(name, frozen base, processor, its backbone). An unsupported family is refused from its config, before
    any weight is read."""
    name = config.base_model
    try:
        backbone = backbone_for(AutoConfig.from_pretrained(name))
    except ValueError as error:
        raise UnusableBase(str(error)) from None
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    base = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, attn_implementation="sdpa")
    processor = load_processor(name, backbone)
    if config.chat_template is not None:
        processor.chat_template = LLAVA_TEMPLATE if config.chat_template == "llava-1.5" else backbone.chat_template
    elif "{% generation %}" not in (processor.chat_template or ""):
        raise UnusableBase(f"{name}'s chat template does not mark assistant turns with {{% generation %}}, which "
                           f"training needs to label the answers: pass --chat_template family (lvprune's copy of "
                           f"the {backbone.family} template, which does) or a processor whose template does.")
    return name, base, processor, backbone


def load_processor(name: str, backbone: Backbone):
    try:
        return AutoProcessor.from_pretrained(name)
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
        raise UnusableBase(f"{backbone.family}'s processor needs torchvision (its video processor): install one "
                           "built for your torch, e.g. pip install 'lvprune[video]'.") from error
