"""Greedy answers of a (possibly pruned) vision-language model to a list of questions."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from lvprune.bench.questions import Question, prompt_batches
from lvprune.families import backbone_for

MAX_NEW_TOKENS = 8  # short answers: the longest shapes one ("in the northwest") is 5 word-level tokens plus </s>


@torch.no_grad()
def answer_questions(model, processor, questions: list[Question], *, batch_size: int = 32, blank: bool = False,
                     max_new_tokens: int = MAX_NEW_TOKENS, desc: str | None = None) -> list[str]:
    """Greedy-decode an answer to each question (batched, left padding); returns the decoded strings."""
    tokenizer = processor.tokenizer
    answers = []
    batches = prompt_batches(questions, processor, batch_size, blank, backbone_for(model.config))
    total = -(-len(questions) // batch_size)
    for batch in tqdm(batches, total=total, desc=desc, leave=False, disable=desc is None):
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, batch["input_ids"].shape[1] :]
        answers += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers
