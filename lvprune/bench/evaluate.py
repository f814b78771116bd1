"""Accuracy of a model on a LLaVA-format test split: overall, per question type, yes/no F1, and with blank images."""

from __future__ import annotations

from pathlib import Path

from lvprune.bench.answers import answer_questions
from lvprune.bench.metrics import accuracy_by_type, chance_accuracy, exact_match, yes_no_f1
from lvprune.bench.questions import Question, load_questions


def score(predictions: list[str], questions: list[Question]) -> dict:
    """`accuracy`, `accuracy_by_type` and `yes_no_f1` of predictions against the questions' answers."""
    answers, types = [q.answer for q in questions], [q.type for q in questions]
    return {
        "accuracy": exact_match(predictions, answers),
        "accuracy_by_type": accuracy_by_type(predictions, answers, types),
        "yes_no_f1": yes_no_f1(predictions, answers),
    }


def evaluate_answers(model, processor, json_path: str | Path, image_folder: str | Path, *, limit: int | None = None,
                     batch_size: int = 32, progress: bool = True) -> dict:
    """Score greedy answers on the split, then again with every image blanked (the scene emptied).

    With blank images a model that reads the image can only fall back on the question, so its accuracy
    should fall to `chance_accuracy` (the best blind guess: each type's most frequent answer).
    """
    questions = load_questions(json_path, image_folder, limit)
    seen = answer_questions(model, processor, questions, batch_size=batch_size, desc="test" if progress else None)
    blind = answer_questions(model, processor, questions, batch_size=batch_size, blank=True,
                             desc="test, blank images" if progress else None)
    blank = score(blind, questions)
    answers, types = [q.answer for q in questions], [q.type for q in questions]
    return {
        "test_questions": len(questions),
        **score(seen, questions),
        "blank_accuracy": blank["accuracy"],
        "blank_accuracy_by_type": blank["accuracy_by_type"],
        "chance_accuracy": chance_accuracy(answers, types),
    }
