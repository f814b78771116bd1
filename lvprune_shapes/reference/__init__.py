"""The reference base model: a small LLaVA trained from scratch on the synthetic shapes VQA, on CPU.

It is what lvprune's benchmark prunes: a stock `LlavaForConditionalGeneration` (CLIP-style vision tower,
2-layer projector, Llama language model) built from config, that answers the shapes questions from the
image and falls to chance without it. `reference_base()` returns its folder (weights, processor and
`reference_report.json` with the training time and test accuracies), training it on first use.

The recipe follows LLaVA's stages, with dense supervision where a from-scratch model on a CPU budget
would otherwise not find its way:

1. `vision`: the CLIP tower alone learns per-patch colour and cell labels;
2. `training`: with the tower frozen, the projector and language model learn the answers, helped by
   auxiliary losses read off the stock model through hooks (`grounding`): head 0 of the second layer is told
   which patches the naming word refers to; object patches' hidden states there are turned towards the
   embeddings of their colour and cell words; the naming word's output predicts the answer's key word and,
   one layer up, which grid cells the named objects sit in; and the answer attends to the naming word.
   The lookup happens after LVPruning's first stage and the objects are small (a few patches each), so a
   pruner that drops the named object's patches costs answers: the benchmark can tell good pruning from bad.

Training is deterministic in `ReferenceConfig.seed` (on one machine).
"""

from lvprune_shapes.reference.cache import DEFAULT_CACHE_DIR, is_reference_folder, load_reference, reference_base
from lvprune_shapes.reference.config import ReferenceConfig
from lvprune_shapes.reference.data import ShapesTrainingSet, make_reference_data
from lvprune_shapes.reference.grounding import GroundingProbe
from lvprune_shapes.reference.model import build_reference_model, reference_llava_config
from lvprune_shapes.reference.targets import grounding_rows, object_patches, patch_labels
from lvprune_shapes.reference.train_reference import REPORT_FILE, reference_loss, train_reference

__all__ = [
    "DEFAULT_CACHE_DIR", "REPORT_FILE", "GroundingProbe", "ReferenceConfig", "ShapesTrainingSet",
    "build_reference_model", "grounding_rows", "is_reference_folder", "load_reference", "make_reference_data",
    "object_patches", "patch_labels", "reference_base", "reference_llava_config", "reference_loss", "train_reference",
]
