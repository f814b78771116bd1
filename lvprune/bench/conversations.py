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


def conversation_images(conversation: Conversation, blank: bool = False) -> list[Image.Image]:
    """The conversation's images, in tag order (blank ones of the same sizes with `blank`)."""
    images = [load_image(path, conversation.id) for path in conversation.images]
    return [Image.new("RGB", image.size, BLANK_COLOUR) for image in images] if blank else images


def first_prompt(conversation: Conversation, images, processor, backbone) -> dict:
    """The first turn's prompt (images, question, generation prompt) as model inputs, a batch of one."""
    turns = [{"from": "human", "value": "<image>\n" * len(images) + conversation.turns[0]["question"]}]
    out = processor.apply_chat_template(to_messages(turns, images), add_generation_prompt=True, tokenize=True,
                                        return_dict=True, return_tensors=None)
    inputs = model_inputs(out, processor, backbone, with_images=True)
    per_token = ("input_ids", "attention_mask", *backbone.token_inputs)  # images are stacked already
    return {k: v[None] if k in per_token else v for k, v in inputs.items()}


SENTINEL = "\u241e"  # stands for an answer where the template is rendered to find what follows one


def continuation(conversation: Conversation, turn: int, processor) -> list[int]:
    """The tokens that follow the answer to turn `turn - 1` up to turn `turn`'s generation prompt (the end of the
    assistant's turn, the next question), as the chat template renders them."""
    turns = []
    for k, item in enumerate(conversation.turns[: turn + 1]):
        turns.append({"from": "human", "value": item["question"]})
        if k < turn:
            turns.append({"from": "gpt", "value": SENTINEL})
    text = processor.apply_chat_template(to_messages(turns), add_generation_prompt=True, tokenize=False)
    return processor.tokenizer(text.rsplit(SENTINEL, 1)[1], add_special_tokens=False)["input_ids"]


def vision_prefix(inputs: dict, model) -> int:
    """Length of the first prompt up to its last vision token: the part of a prompt known before its question."""
    vision = torch.isin(inputs["input_ids"][0], torch.tensor(backbone_for(model.config).vision_token_ids(model.config)))
    return int(vision.nonzero().max()) + 1


def prefill_context(model, inputs: dict) -> dict:
    """Prefill `inputs`' images (the prompt up to its last vision token) alone, as a prefix cache is made before
    the question is known; -> the first turn's inputs to generate from that cache (input_ids whole, no images)."""
    ids, prefix = inputs["input_ids"], vision_prefix(inputs, model)
    images = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    out = model(input_ids=ids[:, :prefix], attention_mask=torch.ones_like(ids[:, :prefix]), use_cache=True, **images)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), cache_kwarg(model): output_cache(out)}


@torch.no_grad()
def answer_conversation(model, processor, conversation: Conversation, *, blank: bool = False,
                        max_new_tokens: int = MAX_NEW_TOKENS, return_ids: bool = False, context: bool = False):
    """Greedy answers to every turn, each generated from the cache the turns before left: the next question's
    tokens (`continuation`) follow the model's own generated answer, whatever it is, as a chat server appends
    them. Vision placeholders are never generated. With `return_ids`, also each turn's full input ids. With
    `context`, the images are prefilled (and pruned or pressed) before the first question is known
    (`prefill_context`: kvpress's question-agnostic protocol); by default the first prompt is prefilled whole."""
    tokenizer, backbone = processor.tokenizer, backbone_for(model.config)
    if backbone.token_inputs:
        raise ValueError(f"conversations are answered from the cache on families without per-token inputs; "
                         f"{backbone.family} has {backbone.token_inputs}.")
    eos = tokenizer.eos_token_id
    inputs = first_prompt(conversation, conversation_images(conversation, blank), processor, backbone)
    if context:
        inputs = prefill_context(model, inputs)
    answers, prompts = [], []
    for turn in range(len(conversation.turns)):
        ids = inputs["input_ids"]
        prompts.append(ids[0])
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                             suppress_tokens=list(backbone.vision_token_ids(model.config)))
        answers.append(tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True).strip())
        if turn + 1 < len(conversation.turns):
            sequence, follow = out.sequences[0], continuation(conversation, turn + 1, processor)
            if int(sequence[-1]) == eos and follow[:1] == [eos]:
                follow = follow[1:]  # the model ended its turn itself
            ids = torch.cat([sequence, torch.tensor(follow, dtype=sequence.dtype, device=sequence.device)])[None]
            # The images are in the cache: the next call carries only the new tokens' ids beyond it.
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), cache_kwarg(model): output_cache(out)}
    return (answers, prompts) if return_ids else answers


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
