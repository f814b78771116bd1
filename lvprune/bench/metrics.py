"""Scoring generated answers with torchmetrics: exact-match accuracy, yes/no F1 and item F1 of list answers."""

from __future__ import annotations

from collections import defaultdict

import torch
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MultilabelF1Score

YES, NO = "yes", "no"


def normalize(text: str) -> str:
    """The comparable form of an answer: surrounding whitespace stripped (answers are case-exact words)."""
    return text.strip()


def exact_match(predictions: list[str], answers: list[str]) -> float:
    """Fraction of predictions equal to their answer, as torchmetrics' micro multiclass accuracy.

    Answers are the classes; a prediction outside them gets an extra "other" class (always wrong).
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers.")
    if not answers:
        return float("nan")
    classes = {a: i for i, a in enumerate(sorted({normalize(a) for a in answers}))}
    other = len(classes)
    target = torch.tensor([classes[normalize(a)] for a in answers])
    preds = torch.tensor([classes.get(normalize(p), other) for p in predictions])
    metric = MulticlassAccuracy(num_classes=other + 1, average="micro")
    return float(metric(preds, target))


def yes_no_f1(predictions: list[str], answers: list[str]) -> float:
    """F1 of "yes" over the questions whose answer is yes or no (torchmetrics `BinaryF1Score`).

    Any prediction other than "yes" counts as "no". NaN when there is no yes/no question.
    """
    pairs = [(normalize(p), normalize(a)) for p, a in zip(predictions, answers) if normalize(a) in (YES, NO)]
    if not pairs:
        return float("nan")
    preds = torch.tensor([p == YES for p, _ in pairs], dtype=torch.long)
    target = torch.tensor([a == YES for _, a in pairs], dtype=torch.long)
    return float(BinaryF1Score()(preds, target))


def accuracy_by_type(predictions: list[str], answers: list[str], types: list[str]) -> dict[str, float]:
    """Exact-match accuracy of each question type, types in sorted order."""
    groups = defaultdict(lambda: ([], []))
    for p, a, t in zip(predictions, answers, types):
        groups[t][0].append(p)
        groups[t][1].append(a)
    return {t: exact_match(*groups[t]) for t in sorted(groups)}


def chance_accuracy(answers: list[str], types: list[str]) -> float:
    """Accuracy of the best blind guess: per type, always answering its most frequent answer."""
    by_type = defaultdict(list)
    for a, t in zip(answers, types):
        by_type[t].append(normalize(a))
    hits = sum(max(group.count(a) for a in set(group)) for group in by_type.values())
    return hits / max(len(answers), 1)


def items(text: str, separator: str = ", ") -> set[str]:
    """The items a list answer names ("red in the north, blue in the centre" -> two), empty ones dropped."""
    return {item.strip() for item in normalize(text).split(separator) if item.strip()}


def item_f1(predictions: list[str], answers: list[str], separator: str = ", ") -> float:
    """Micro F1 of the items the predictions name against the answers' (torchmetrics `MultilabelF1Score`, one
    label per distinct item): 2 × matched / (predicted + true), over all answers. NaN when there is none."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers.")
    if not answers:
        return float("nan")
    predicted, true = [items(p, separator) for p in predictions], [items(a, separator) for a in answers]
    labels = {item: i for i, item in enumerate(sorted(set().union(*predicted, *true)))}
    if not labels:
        return float("nan")

    def matrix(sets):
        rows = torch.zeros(len(sets), len(labels), dtype=torch.long)
        for row, found in enumerate(sets):
            rows[row, [labels[item] for item in found]] = 1
        return rows

    metric = MultilabelF1Score(num_labels=len(labels), average="micro")
    return float(metric(matrix(predicted), matrix(true)))
