"""Data for lvprune: a synthetic shapes VQA set, a closed-vocabulary LLaVA processor, and the
LLaVA-format training loader with its collator."""

from .collator import LlavaCollator
from .llava_format import IGNORE_INDEX, encode_record, load_llava_dataset, to_messages
from .processor import CHAT_TEMPLATE, ProcessorConfig, build_processor, words_in
from .records import SKIP_REASONS, LoadStats
from .shapes import QUESTION_TYPES, ShapesConfig, answer_options, generate_split, make_shapes_dataset, vocabulary

__all__ = [
    "CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "QUESTION_TYPES",
    "SKIP_REASONS",
    "LlavaCollator",
    "LoadStats",
    "ProcessorConfig",
    "ShapesConfig",
    "answer_options",
    "build_processor",
    "encode_record",
    "generate_split",
    "load_llava_dataset",
    "make_shapes_dataset",
    "to_messages",
    "vocabulary",
    "words_in",
]
