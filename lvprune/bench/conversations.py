"""Conversations about several images, answered turn by turn from the cache, as a chat is served.

The first world's benchmark asks one short question, whose answer is computed in the prefill. Here (the second
reference world, `lvprune_shapes.world2`) a record holds 1-4 images and 1-3 questions: the first turn's prompt
(images + question) is prefilled, pruned or pressed, and its answer generated; each later question is appended
after the model's *own* answer and answered from the cache of the turns before, never re-prefilled. List answers
are long (25-43 tokens) and scored by item F1; the others by exact match.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from lvprune.bench.metrics import exact_match, item_f1
from lvprune.bench.questions import BLANK_COLOUR
from lvprune.core.contract import cache_kwarg, output_cache
from lvprune.data.llava_format import load_image, model_inputs, to_messages
from lvprune.families import backbone_for

LIST_TASKS = ("list",)  # answers scored by item F1
MAX_NEW_TOKENS = 48  # the longest list answer is 43 word-level tokens, plus </s>


@dataclass(frozen=True)
class Conversation:
    """A record's images (paths) and turns (`{"task", "question", "answer"}`, first to last)."""

    id: str
    images: tuple[str, ...]
    turns: tuple[dict, ...]

    @property
    def task(self) -> str:
        return self.turns[0]["task"]


def load_conversations(json_path, image_folder, limit: int | None = None) -> list[Conversation]:
    """The records of a world-2 split (`qa` turns with a `task`), at most `limit`, images under `image_folder`."""
    with open(json_path) as f:
        records = json.load(f)[:limit]
    conversations = []
    for record in records:
        if "qa" not in record or "task" not in record["qa"][0]:
            raise ValueError(f"{json_path}: record {record.get('id')} has no `qa` turns with a `task`; conversations "
                             "are read from the second reference world's records (python -m "
                             "lvprune_shapes.make_shapes --world 2).")
        names = record["image"] if isinstance(record["image"], list) else [record["image"]]
        conversations.append(Conversation(str(record["id"]), tuple(os.path.join(image_folder, n) for n in names),
                                          tuple(record["qa"])))
    return conversations


def _images(conversation: Conversation, blank: bool) -> list[Image.Image]:
    images = [load_image(path, conversation.id) for path in conversation.images]
    return [Image.new("RGB", image.size, BLANK_COLOUR) for image in images] if blank else images


def _prompt(conversation: Conversation, answers: list[str], images, processor, backbone) -> dict:
    """The chat up to the next question's generation prompt: the turns answered so far with `answers` (the
    model's own), then the next question. -> model inputs, a batch of one."""
    turns = []
    for k, turn in enumerate(conversation.turns[: len(answers) + 1]):
        tags = "<image>\n" * len(images) if k == 0 else ""
        turns.append({"from": "human", "value": tags + turn["question"]})
        if k < len(answers):
            turns.append({"from": "gpt", "value": answers[k]})
    out = processor.apply_chat_template(to_messages(turns, images), add_generation_prompt=True, tokenize=True,
                                        return_dict=True, return_tensors=None)
    inputs = model_inputs(out, processor, backbone, with_images=True)
    per_token = ("input_ids", "attention_mask", *backbone.token_inputs)  # images are stacked already
    return {k: v[None] if k in per_token else v for k, v in inputs.items()}


@torch.no_grad()
def answer_conversation(model, processor, conversation: Conversation, *, blank: bool = False,
                        max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers to every turn, each generated from the cache the turns before left (the model's own
    answers in the history). Each turn's prompt must extend the previous turn's text, which the chat templates
    of LLaVA-format processors do; otherwise a ValueError says so."""
    tokenizer, backbone = processor.tokenizer, backbone_for(model.config)
    images, answers, cache, seen = _images(conversation, blank), [], None, None
    for _ in conversation.turns:
        inputs = _prompt(conversation, answers, images, processor, backbone)
        ids = inputs["input_ids"]
        if seen is not None:
            if not torch.equal(ids[0, : seen.shape[1]], seen[0]):
                raise ValueError(f"conversation {conversation.id}: the chat template renders the history (the "
                                 "model's answer included) otherwise than it was generated, so the next turn cannot "
                                 "be answered from the cache.")
            inputs = {k: v for k, v in inputs.items() if k not in backbone.image_inputs}  # the images are cached
            inputs[cache_kwarg(model)] = cache
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out.sequences[0, ids.shape[1]:]
        answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        # The cache holds every token but the last generated; the next prompt re-renders the answer through the
        # template, and must start with exactly those tokens.
        cache, seen = output_cache(out), out.sequences[:, :-1]
    return answers


def score_conversations(conversations: list[Conversation], predictions: list[list[str]]) -> dict:
    """Per task (the turn's own) and per turn index: exact match, or item F1 for list answers, as fractions.

    -> {"by_task": {task: score}, "by_turn": {1: score over every task's first turns, ...}, "overall": mean of
    the task scores}.
    """
    by_task, by_turn = {}, {}
    for conversation, answers in zip(conversations, predictions, strict=True):
        for k, (turn, said) in enumerate(zip(conversation.turns, answers, strict=True)):
            by_task.setdefault(turn["task"], ([], []))
            by_turn.setdefault(k + 1, {}).setdefault(turn["task"], ([], []))
            for groups in (by_task[turn["task"]], by_turn[k + 1][turn["task"]]):
                groups[0].append(said)
                groups[1].append(turn["answer"])

    def task_score(task, said, true):
        return item_f1(said, true) if task in LIST_TASKS else exact_match(said, true)

    tasks = {task: task_score(task, *groups) for task, groups in sorted(by_task.items())}
    turns = {k: sum(task_score(t, *g) * len(g[0]) for t, g in per.items()) / sum(len(g[0]) for g in per.values())
             for k, per in sorted(by_turn.items())}
    return {"by_task": tasks, "by_turn": turns, "overall": sum(tasks.values()) / max(len(tasks), 1)}


def evaluate_conversations(model, processor, json_path, image_folder, *, limit: int | None = None,
                           blank: bool = False, progress: bool = True) -> dict:
    """Answer every conversation of the split turn by turn (`answer_conversation`) and score them."""
    conversations = load_conversations(json_path, image_folder, limit)
    desc = ("conversations, blank images" if blank else "conversations") if progress else None
    predictions = [answer_conversation(model, processor, c, blank=blank)
                   for c in tqdm(conversations, desc=desc, leave=False, disable=desc is None)]
    return {"conversations": len(conversations), **score_conversations(conversations, predictions),
            "predictions": predictions}
