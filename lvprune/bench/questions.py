"""Evaluation questions: the first turn of each record of a LLaVA-format split, encoded as a prompt.

A prompt is the record's first human turn with its image, rendered by the processor's chat template with
the generation prompt (`... ASSISTANT: `), so the model's greedy continuation is its answer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lvprune.data.collator import LlavaCollator
from lvprune.data.llava_format import load_image, to_messages

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


def encode_question(question: Question, processor, blank: bool = False) -> dict:
    """Prompt tensors: input_ids, attention_mask [N] (long) and pixel_values [1, 3, H, W] (float)."""
    messages = to_messages([question.human_turn], [question_image(question, blank)])
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    pixel_values = torch.from_numpy(np.stack(out["pixel_values"])).float()
    return {
        "input_ids": torch.tensor(out["input_ids"][0], dtype=torch.long),
        "attention_mask": torch.tensor(out["attention_mask"][0], dtype=torch.long),
        "pixel_values": pixel_values.reshape(-1, *pixel_values.shape[-3:]),
    }


def prompt_batches(questions: list[Question], processor, batch_size: int, blank: bool = False):
    """Yield left-padded prompt batches (for batched generation) of `batch_size` questions."""
    collate = LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id, padding_side="left")
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        yield collate([encode_question(q, processor, blank) for q in chunk])


def single_prompt(question: Question, processor, blank: bool = False) -> dict:
    """A batch of one prompt: input_ids, attention_mask [1, N] and pixel_values [1, 3, H, W]."""
    collate = LlavaCollator(pad_token_id=processor.tokenizer.pad_token_id, padding_side="left")
    return collate([encode_question(question, processor, blank)])
