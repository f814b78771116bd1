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

from .shapes import vocabulary as shapes_vocabulary

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)
WHITESPACE = (" ", "\n", "\t")
TEMPLATE_WORDS = ("USER", "ASSISTANT")
# Words, single punctuation marks and single whitespace characters are the pieces; the special tokens
# are split off before this runs.
WORD_PATTERN = r"[A-Za-z0-9]+"
PIECE_PATTERN = WORD_PATTERN + r"|[^A-Za-z0-9\s]|\s"
STRATEGIES = ("default", "full")

CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>' }}{%- else -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ render(message['content']) + ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + render(message['content']) + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' }}"
    "{% generation %}{{ render(message['content']) + eos_token }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT: ' }}{%- endif -%}"
)
"""LLaVA-1.5 (Vicuna v1) prompt. Content items are joined by newlines, so `[image, text]` renders as
LLaVA's `<image>\\n{text}`. The supervised span of an assistant turn is its text plus `</s>`; the
generation prompt ends with the space that precedes an answer during training."""


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


def build_tokenizer(words) -> PreTrainedTokenizerFast:
    """A lossless word-level fast tokenizer over `words` that prepends `<s>` (LLaMA-like)."""
    vocab = build_vocab(words)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()  # pieces carry their own whitespace: concatenation is exact
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE},
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
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
