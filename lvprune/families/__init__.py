"""The model families lvprune prunes, one module each, registered by `config.model_type`.

    backbone = lvprune.families.backbone_for(model.config)   # ValueError for an unsupported family

Adding a family: a module here that registers a `Backbone` (its vision-token fields, the processor outputs a
batch carries, a tiny config and random images for the tests, its chat template, and what its images cost for
`lvprune flops`), imported below, and one row in `tests/test_methods_families.py`'s matrix.
"""

from lvprune.families import internvl, llava, llava_next, llava_onevision, mistral3, qwen2_vl  # noqa: F401  (they register)
from lvprune.families.base import (
                                            REFUSED,
                                            TINY_FIRST_TEXT_ID,
                                            TINY_IDS,
                                            Backbone,
                                            backbone_for,
                                            register,
                                            supported,
                                            vision_mask,
)

__all__ = ["REFUSED", "TINY_FIRST_TEXT_ID", "TINY_IDS", "Backbone", "backbone_for", "register", "supported",
           "vision_mask"]
