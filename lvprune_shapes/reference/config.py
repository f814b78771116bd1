"""`ReferenceConfig`: sizes, data and schedule of the reference base (defaults: the documented model)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceConfig:
    """How the reference base is built and trained (see `lvprune_shapes.reference`).

    image_size / patch_size: `(image_size // patch_size) ** 2` vision tokens per image.
    train_records, turns: training images and questions asked about each (a turn costs a dozen tokens next
        to the image's hundreds, so several turns per image buy supervision cheaply).
    vision_steps, vision_batch_size, vision_learning_rate: stage 1, the vision tower alone on per-patch labels.
    steps, batch_size, learning_rate, warmup_steps: stage 2, projector + language model on the answers.
    grounding_weight: weight of the attention loss that points head 0 of `grounding_layer`, at the word that
        names the object, to the object's patches (0 turns it off).
    alignment_weight: weight of the loss that turns each object patch's hidden state at the grounding layer
        towards the sum of the embeddings of its colour word and its cell word (0 turns it off).
    early_answer_weight: weight of the cross-entropy that makes the model's output at the naming word predict
        the answer's key word (the question positions are otherwise unsupervised, so nothing conflicts).
    copy_weight: weight of the attention loss that points head 0 of the layer after `grounding_layer`, at the
        positions that predict the answer, to the naming word.
    cells_weight: weight of the loss that makes the hidden state at the naming word, one layer above the
        grounding layer, say (through a linear head, thrown away afterwards) which grid cells hold the named
        objects and how many there are: a place is then the set's only member, a count its size.
    """

    image_size: int = 96
    patch_size: int = 6
    object_size: tuple[float, float] = (0.25, 0.4)
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    rope_theta: float = 10000.0
    train_records: int = 3000
    test_records: int = 500
    turns: int = 12
    vision_steps: int = 400
    vision_batch_size: int = 32
    vision_learning_rate: float = 2e-3
    steps: int = 1400
    batch_size: int = 8
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    grounding_weight: float = 1.0
    grounding_layer: int = 1
    alignment_weight: float = 1.0
    early_answer_weight: float = 1.0
    copy_weight: float = 1.0
    cells_weight: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}.")
        for name, heads in (("vision_hidden_size", self.vision_heads), ("hidden_size", self.num_heads)):
            if getattr(self, name) % heads:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of its heads ({heads}).")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}.")
        for name in ("train_records", "test_records", "turns", "steps", "batch_size", "num_layers",
                     "vision_batch_size", "vision_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        for name in ("vision_steps", "warmup_steps", "grounding_weight", "alignment_weight", "early_answer_weight",
                     "copy_weight", "cells_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        if self.learning_rate <= 0 or self.vision_learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} and vision_learning_rate="
                             f"{self.vision_learning_rate} must be > 0.")
        if not 0 <= self.grounding_layer < self.num_layers - 1:
            raise ValueError(f"grounding_layer={self.grounding_layer} must be in [0, num_layers - 1 = "
                             f"{self.num_layers - 1}): the copy is supervised one layer later.")

    @property
    def vision_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2
