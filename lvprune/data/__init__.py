"""Data for lvprune: a synthetic shapes VQA set, a closed-vocabulary LLaVA processor, and the
LLaVA-format training loader with its collator."""

from .shapes import ShapesConfig, generate_split, make_shapes_dataset, vocabulary

__all__ = ["ShapesConfig", "generate_split", "make_shapes_dataset", "vocabulary"]
