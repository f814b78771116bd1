"""Data for lvprune: the LLaVA-format training loader, through the base's own processor, and its collator."""

from lvprune.data.collator import LlavaCollator
from lvprune.data.llava_format import IGNORE_INDEX, encode_record, load_llava_dataset, to_messages
from lvprune.data.records import SKIP_REASONS, LoadStats

__all__ = ["IGNORE_INDEX", "SKIP_REASONS", "LlavaCollator", "LoadStats", "encode_record", "load_llava_dataset",
           "to_messages"]
