"""A small LLaVA-1.5-style processor over a closed, word-level vocabulary.

`build_processor()` returns a stock `transformers.LlavaProcessor` made of

- a word-level fast tokenizer (the `tokenizers` library): one token per word, per punctuation mark
  and per whitespace character, so that `decode(encode(text)) == text` for in-vocabulary text; the
  special tokens `<pad> <s> </s> <unk> <image>`; `<s>` is prepended like LLaMA's tokenizer does;
- a `CLIPImageProcessorPil` (the PIL backend of the CLIP image processor, no torchvision needed):
  resize the shortest edge to `image_size`, centre-crop to `image_size` x `image_size`, CLIP mean/std;
- a LLaVA-1.5 (Vicuna v1) chat template:
  `USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT: {answer}</s>`.

Each `<image>` becomes `(image_size // patch_size) ** 2` placeholders (576 for 96 / 4): the stock
processor computes `(H // patch) * (W // patch) + num_additional_image_tokens`, minus one when
`vision_feature_select_strategy == "default"`, so both LLaVA-1.5's own pair (1, "default": a CLIP
tower whose CLS token is dropped) and (0, "full": a tower without CLS) give the square count. The
pair must match the model's `vision_feature_select_strategy`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from lvprune.families.llava import CHAT_TEMPLATE
from lvprune_shapes.dataset import vocabulary as shapes_vocabulary

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)
WHITESPACE = (" ", "\n", "\t")
TEMPLATE_WORDS = ("USER", "ASSISTANT")
# Words, single punctuation marks and single whitespace characters are the pieces; the special tokens
# are split off before this runs.
WORD_PATTERN = r"[A-Za-z0-9]+"
PIECE_PATTERN = WORD_PATTERN + r"|[^A-Za-z0-9\s]|\s"
STRATEGIES = ("default", "full")

@dataclass(frozen=True)
class ProcessorConfig:
    """Settings of `build_processor`; validated once here."""

    image_size: int = 96
    patch_size: int = 4
    num_additional_image_tokens: int = 1
    vision_feature_select_strategy: str = "default"
    words: tuple[str, ...] = field(default_factory=lambda: tuple(shapes_vocabulary()))
    extra_words: tuple[str, ...] = ()

    def __post_init__(self):
        if self.image_size <= 0 or self.patch_size <= 0 or self.image_size % self.patch_size:
            raise ValueError(
                f"image_size must be a positive multiple of patch_size, got image_size={self.image_size}, "
                f"patch_size={self.patch_size}"
            )
        if self.vision_feature_select_strategy not in STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy must be one of {STRATEGIES}, "
                f"got {self.vision_feature_select_strategy!r}"
            )
        if self.num_additional_image_tokens < (self.vision_feature_select_strategy == "default"):
            raise ValueError(
                "vision_feature_select_strategy='default' drops one extra (CLS) token, so "
                f"num_additional_image_tokens must be >= 1, got {self.num_additional_image_tokens}"
            )
        bad = [w for w in (*self.words, *self.extra_words) if not re.fullmatch(WORD_PATTERN, w)]
        if bad:
            # anything else is split into several pieces by the pre-tokenizer and never matches
            raise ValueError(f"words must match {WORD_PATTERN!r} (letters and digits only), got {bad[:5]}")

    @property
    def image_seq_length(self) -> int:
        """Placeholder tokens per image: what the stock processor will insert."""
        n = (self.image_size // self.patch_size) ** 2 + self.num_additional_image_tokens
        return n - (self.vision_feature_select_strategy == "default")


def words_in(texts) -> list[str]:
    """The sorted distinct words (letters and digits) of `texts`: a vocabulary for other datasets."""
    return sorted({w for text in texts for w in re.findall(WORD_PATTERN, text)})


def build_vocab(words) -> dict[str, int]:
    """Token -> id: special tokens first (pad=0, bos=1, eos=2, unk=3, image=4), then whitespace,
    ASCII punctuation, digits and the sorted words. Deterministic in `words`."""
    pieces = list(SPECIAL_TOKENS) + list(WHITESPACE) + list(string.punctuation) + list(string.digits)
    pieces += sorted(set(words) | set(TEMPLATE_WORDS) - set(pieces))
    return {piece: i for i, piece in enumerate(pieces)}


def build_tokenizer(words, specials: dict | None = None, chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A lossless word-level fast tokenizer over `words` that prepends `<s>` (LLaMA-like).

    specials: tokenizer attribute -> special token, the placeholders a family's processor reads from its
    tokenizer (default LLaVA's `image_token="<image>"`); tokens beyond the base ones get the next ids, so a
    LLaVA tokenizer's ids do not depend on them.
    """
    specials = specials or {"image_token": IMAGE}
    vocab = build_vocab(words)
    for token in specials.values():
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()  # pieces carry their own whitespace: concatenation is exact
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens(list(dict.fromkeys([*SPECIAL_TOKENS, *specials.values()])))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens=specials,
        clean_up_tokenization_spaces=False,
        chat_template=chat_template,
    )


def build_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """CLIP preprocessing at `image_size`: bicubic resize of the short edge, centre crop, CLIP mean/std."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )


def build_processor(config: ProcessorConfig | None = None, **overrides) -> LlavaProcessor:
    """A stock `LlavaProcessor` for the closed vocabulary; `overrides` are `ProcessorConfig` fields.

    `build_processor(image_size=96, patch_size=4)` inserts 576 `<image>` tokens per image.
    """
    if config is not None and overrides:
        raise ValueError(f"pass either a ProcessorConfig or keyword overrides, not both (got {sorted(overrides)})")
    config = config or ProcessorConfig(**overrides)
    return LlavaProcessor(
        image_processor=build_image_processor(config.image_size),
        tokenizer=build_tokenizer((*config.words, *config.extra_words)),
        patch_size=config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=config.num_additional_image_tokens,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )


# ------------------------------------------------------------------------------ the other families

# Per family: the tokenizer attributes its processor reads (placeholders), and the template's other special tokens.
CHATML = {"im_start": "<|im_start|>", "im_end": "<|im_end|>"}
FAMILY_SPECIALS = {
    "llava_next": {"image_token": IMAGE},
    "llava_onevision": {"image_token": IMAGE, "video_token": "<video>", **CHATML},
    "qwen2_vl": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>", **CHATML},
    "mistral3": {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]",
                 "inst": "[INST]", "inst_end": "[/INST]", "system": "[SYSTEM_PROMPT]", "system_end": "[/SYSTEM_PROMPT]"},
    "internvl": {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                 "video_token": "<video>", **CHATML},
}
FAMILY_SPECIALS["qwen2_5_vl"] = FAMILY_SPECIALS["qwen2_vl"]
TEMPLATE_TEXT = ("user", "assistant", "system", "You", "are", "a", "helpful")


def build_family_processor(model_type: str, words=None):
    """The stock processor of family `model_type` (`lvprune.families`) over the closed vocabulary, sized for the
    family's tiny config (`Backbone.tiny_config`) and using the family's training chat template.

    Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision and InternVL processors hold a video processor, which needs torchvision.
    """
    import transformers

    from lvprune.families import supported
    from lvprune.families.llava_next import TINY_PINPOINTS

    if model_type == "llava":
        return build_processor()
    backbone = supported()[model_type]
    words = tuple(words if words is not None else shapes_vocabulary()) + TEMPLATE_TEXT
    tokenizer = build_tokenizer(words, FAMILY_SPECIALS[model_type], backbone.chat_template)
    template = dict(chat_template=backbone.chat_template)
    if model_type == "llava_next":
        images = transformers.LlavaNextImageProcessorPil(
            size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_grid_pinpoints=TINY_PINPOINTS)
        return transformers.LlavaNextProcessor(images, tokenizer, patch_size=4, vision_feature_select_strategy="default",
                                               num_additional_image_tokens=1, image_token=IMAGE, **template)
    if model_type == "llava_onevision":
        images = transformers.LlavaOnevisionImageProcessorPil(size={"height": 16, "width": 16},
                                                              image_grid_pinpoints=TINY_PINPOINTS)
        return transformers.LlavaOnevisionProcessor(images, tokenizer, _video_processor("LlavaOnevision"),
                                                    num_image_tokens=16, vision_feature_select_strategy="full",
                                                    **template)
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        images = transformers.Qwen2VLImageProcessorPil(patch_size=2, merge_size=2, temporal_patch_size=2,
                                                       min_pixels=8 * 8, max_pixels=32 * 32)
        cls = transformers.Qwen2VLProcessor if model_type == "qwen2_vl" else transformers.Qwen2_5_VLProcessor
        return cls(images, tokenizer, _video_processor("Qwen2VL", patch_size=2, merge_size=2, temporal_patch_size=2),
                   **template)
    if model_type == "mistral3":
        images = transformers.PixtralImageProcessorPil(patch_size=2, size={"longest_edge": 16})
        return transformers.PixtralProcessor(images, tokenizer, patch_size=2, spatial_merge_size=2,
                                             image_token="[IMG]", image_break_token="[IMG_BREAK]",
                                             image_end_token="[IMG_END]", **template)
    if model_type == "internvl":
        images = transformers.GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=False)
        return transformers.InternVLProcessor(images, tokenizer, _video_processor("InternVL"), image_seq_length=16,
                                              **template)
    raise ValueError(f"no tiny processor for model_type {model_type!r}")


def _video_processor(family: str, **settings):
    """The family's stock video processor; it needs torchvision, and says so clearly when it is missing."""
    import transformers

    try:
        return getattr(transformers, f"{family}VideoProcessor")(**settings)
    except ImportError as error:
        raise ImportError(f"the {family} processor holds a video processor, which needs torchvision: "
                          "pip install 'lvprune[video]' (a torchvision built for your torch).") from error


# Families whose stock processor needs torchvision (a video processor, or Pixtral's processor).
TORCHVISION_PROCESSORS = ("internvl", "llava_onevision", "mistral3", "qwen2_5_vl", "qwen2_vl")
