"""Evaluation questions: the first turn of each record of a LLaVA-format split, encoded as a prompt.

A prompt is the record's first human turn with its image, rendered by the processor's chat template with
the generation prompt (`... ASSISTANT: `), so the model's greedy continuation is its answer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lvprune import families
from lvprune.data.collator import LlavaCollator
from lvprune.data.llava_format import load_image, model_inputs, to_messages

BLANK_COLOUR = (235, 235, 235)  # the shapes generator's background: a blank image is an empty scene


@dataclass(frozen=True)
class Question:
    """One question: `image` is a file path; `objects` the scene (with pixel boxes), if the record has it."""

    id: str
    type: str
    question: str
    answer: str
    image: str
    objects: list = field(default_factory=list, compare=False)

    @property
    def human_turn(self) -> dict:
        return {"from": "human", "value": "<image>\n" + self.question}


def load_questions(json_path: str | Path, image_folder: str | Path, limit: int | None = None) -> list[Question]:
    """The first question of each record of `json_path` (at most `limit`), images under `image_folder`."""
    with open(json_path) as f:
        records = json.load(f)
    questions = []
    for record in records[:limit]:
        first = record["qa"][0] if "qa" in record else {
            "type": record.get("type", "unknown"),
            "question": record["conversations"][0]["value"].replace("<image>", "").strip(),
            "answer": record["conversations"][1]["value"],
        }
        path = os.path.join(image_folder, record["image"])
        questions.append(Question(str(record["id"]), first["type"], first["question"], first["answer"], path,
                                  record.get("objects", [])))
    return questions


def question_image(question: Question, blank: bool = False) -> Image.Image:
    """The question's image, or a blank one of the same size (the scene without its objects)."""
    image = load_image(question.image)
    return Image.new("RGB", image.size, BLANK_COLOUR) if blank else image


def encode_question(question: Question, processor, blank: bool = False, backbone=None) -> dict:
    """Prompt tensors: input_ids, attention_mask [N] (long) and the family's vision inputs (`pixel_values`
    [1, 3, H, W] for LLaVA-1.5; `backbone`, default LLaVA-1.5's, says which)."""
    backbone = backbone or families.supported()["llava"]
    messages = to_messages([question.human_turn], [question_image(question, blank)])
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors=None)
    return model_inputs(out, processor, backbone, with_images=True)


def prompt_batches(questions: list[Question], processor, batch_size: int, blank: bool = False, backbone=None):
    """Yield left-padded prompt batches (for batched generation) of `batch_size` questions."""
    collate = _collator(processor, backbone)
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        yield collate([encode_question(q, processor, blank, backbone) for q in chunk])


def single_prompt(question: Question, processor, blank: bool = False, backbone=None) -> dict:
    """A batch of one prompt: input_ids, attention_mask [1, N] and the vision inputs."""
    return _collator(processor, backbone)([encode_question(question, processor, blank, backbone)])


def _collator(processor, backbone) -> LlavaCollator:
    token_inputs = backbone.token_inputs if backbone is not None else ()
    return LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id, padding_side="left", token_inputs=token_inputs)
