"""The shapes test split as an lmms-eval task: the record's first question, its image, exact match of the answer.

The images are resolved against `$SHAPES_IMAGE_FOLDER` (the split's folder). Scoring follows
`lvprune.bench.metrics.exact_match`: a prediction is right when, stripped, it equals the answer.
"""

import os

from PIL import Image


def doc_to_visual(doc):
    with Image.open(os.path.join(os.environ["SHAPES_IMAGE_FOLDER"], doc["image"])) as image:
        return [image.convert("RGB")]


def doc_to_text(doc):
    return doc["conversations"][0]["value"].replace("<image>", "").strip()


def doc_to_target(doc):
    return doc["conversations"][1]["value"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip() == doc_to_target(doc).strip())}
