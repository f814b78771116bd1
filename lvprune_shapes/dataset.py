"""Synthetic shapes VQA in the LLaVA-1.5 instruction format.

Each image shows a few coloured shapes (circle, square, triangle), one per cell of a 3x3 grid, on a
plain background. Each record asks about one object (or one kind of object) named in the question, by
its place or by its colour:

| type       | question                                    | answers                          |
| ---------- | ------------------------------------------- | -------------------------------- |
| `colour`   | What colour is the object in the northwest? | one of 6 colours                 |
| `position` | Where is the red object?                    | `in the northwest` ... (9 cells) |
| `presence` | Is there a blue object?                     | `yes` / `no` (POPE style)        |
| `count`    | How many green objects are there?           | `zero` ... `four`                |

The nine cells are named by single words (`northwest`, `north`, ..., `centre`, ..., `southeast`).
Objects are named by colour and place, not by shape: colour and place are read from single patches,
while telling a circle from a square needs a patch's neighbours, which a vision tower trained from
scratch on CPU learns far more slowly. The shapes stay in the scene as visual variety.

Objects are small by default (`object_size` 0.25-0.4 of a cell's side: at 96 px with 6-px patches, about
3 patches each), so that dropping a random half of the image's patches loses a named object now and then:
a benchmark on larger objects cannot tell a pruner that keeps the right patches from a random one.

The answer of every record is drawn first, balanced within each split and type, and the scene is then
built to match it, so the question alone does not predict the answer: the task needs the image.

A record (one per image) looks like::

    {"id": "train-000000", "image": "images/train/train-000000.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhere is the red object?"},
                       {"from": "gpt", "value": "in the northwest"}],
     "type": "position", "answer": "in the northwest",
     "qa": [{"type": "position", "question": "Where is the red object?", "answer": "in the northwest"}],
     "objects": [{"shape": "triangle", "colour": "red", "position": "northwest", "bbox": [x0, y0, x1, y1]}]}

`type`/`answer` describe the first (balanced) turn; `qa` lists every turn when `turns > 1`. Boxes are
pixel coordinates, `x1`/`y1` exclusive.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
# The 3x3 grid's cells, row by row, one word each (so that a question names a place with a single token).
POSITIONS = ("northwest", "north", "northeast", "west", "centre", "east", "southwest", "south", "southeast")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTION_TYPES = ("colour", "position", "presence", "count")
QUESTION_TEMPLATES = {
    "colour": "What colour is the object in the {position}?",
    "position": "Where is the {colour} object?",
    "presence": "Is there a {colour} object?",
    "count": "How many {colour} objects are there?",
}
IMAGE_TOKEN = "<image>"
BACKGROUND = (235, 235, 235)


@dataclass(frozen=True)
class ShapesConfig:
    """Generator settings; every split draws from its own seeded stream (`seed`, split name)."""

    image_size: int = 96
    min_objects: int = 3
    max_objects: int = 5
    max_count: int = 4
    turns: int = 1
    types: tuple[str, ...] = QUESTION_TYPES
    object_size: tuple[float, float] = (0.25, 0.4)
    seed: int = 0

    def __post_init__(self):
        if self.image_size < 24:
            raise ValueError(f"image_size must be >= 24 pixels, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 9 (one object per grid cell), "
                f"got min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        if not 1 <= self.max_count <= min(self.max_objects, len(COLOURS)):
            raise ValueError(
                f"max_count must be in [1, min(max_objects, {len(COLOURS)})], got {self.max_count} "
                f"with max_objects={self.max_objects}"
            )
        low, high = self.object_size
        if not 0 < low <= high <= 0.9:
            raise ValueError(f"object_size must be (low, high) with 0 < low <= high <= 0.9 of a grid cell, "
                             f"got {self.object_size}")
        if self.turns < 1:
            raise ValueError(f"turns must be >= 1, got {self.turns}")
        bad = [t for t in self.types if t not in QUESTION_TYPES]
        if bad or not self.types:
            raise ValueError(f"types must be a non-empty subset of {QUESTION_TYPES}, got {self.types}")


def answer_options(question_type: str, config: ShapesConfig) -> tuple[str, ...]:
    """Every answer a question type can have under `config` (what balancing spreads over)."""
    if question_type == "colour":
        return tuple(COLOURS)
    if question_type == "position":
        return tuple(position_answer(p) for p in POSITIONS)
    if question_type == "presence":
        return ("yes", "no")
    return NUMBERS[: config.max_count + 1]


def position_answer(position: str) -> str:
    """The answer to "Where is ...?" for an object in `position` (several tokens: "in the northwest")."""
    return f"in the {position}"


def vocabulary() -> list[str]:
    """The words of the generator's questions and answers, plus the shape names and plurals (the scenes hold
    shapes, so a processor built on this vocabulary can also be asked about them), sorted."""
    words = {w for t in QUESTION_TEMPLATES.values() for w in t.replace("?", " ").split() if "{" not in w}
    words |= set(SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(POSITIONS)
    words |= set(NUMBERS) | {"yes", "no"}
    return sorted(words)


# ---------------------------------------------------------------------------------------------
# Scenes: objects placed in distinct grid cells; a named colour occurs exactly as the answer needs.
# ---------------------------------------------------------------------------------------------


def _place(rng: random.Random, colours: list[str], size: int, cells: list[int], object_size) -> list[dict]:
    """Give each colour a random shape, a grid cell and a jittered box fully inside that cell."""
    cell = size / 3
    objects = []
    for colour, idx in zip(colours, cells):
        side = max(4, int(cell * rng.uniform(*object_size)))
        row, col = divmod(idx, 3)
        x0 = int(col * cell) + rng.randint(1, max(1, int(cell) - side - 1))
        y0 = int(row * cell) + rng.randint(1, max(1, int(cell) - side - 1))
        bbox = [x0, y0, x0 + side, y0 + side]
        objects.append({"shape": rng.choice(SHAPES), "colour": colour, "position": POSITIONS[idx], "bbox": bbox})
    return objects


def _scene_for(rng: random.Random, qtype: str, answer: str, config: ShapesConfig) -> tuple[list, str]:
    """Build a scene whose answer to a fresh `qtype` question is `answer`; returns (objects, question).

    The named colour occurs `k` times (1 for colour/position questions, 0/1 for presence, the answer for
    count); the other objects draw their colours from the rest, repeats allowed, so that later turns (see
    `ask_about`) can count more than one object of a colour too.
    """
    n = rng.randint(config.min_objects, config.max_objects)
    named = answer if qtype == "colour" else rng.choice(list(COLOURS))
    k = {"colour": 1, "position": 1, "presence": int(answer == "yes")}.get(qtype)
    k = NUMBERS.index(answer) if k is None else k
    n = max(n, k)
    others = [rng.choice([c for c in COLOURS if c != named]) for _ in range(n - k)]
    colours = [named] * k + others
    cells = rng.sample(range(9), len(colours))
    if qtype == "position":  # the named object goes into the answer's cell
        target = [position_answer(p) for p in POSITIONS].index(answer)
        cells = [target] + rng.sample([c for c in range(9) if c != target], len(colours) - 1)
    objects = _place(rng, colours, config.image_size, cells, config.object_size)
    position = objects[0]["position"]  # a colour question asks about the object of the answer's colour
    rng.shuffle(objects)
    question = QUESTION_TEMPLATES[qtype].format(colour=named, position=position)
    return objects, question


def ask_about(rng: random.Random, objects: list[dict], qtype: str) -> dict:
    """A `{"type", "question", "answer"}` turn about an existing scene (used for later turns).

    A position question needs a colour that occurs once; without one it becomes a colour question. Presence
    and count questions name a colour of the scene half of the time (else any colour), so that counts above
    one are common.
    """
    colours = [o["colour"] for o in objects]
    unique = [o for o in objects if colours.count(o["colour"]) == 1]
    if qtype == "position" and unique:
        obj = rng.choice(unique)
        question = QUESTION_TEMPLATES["position"].format(colour=obj["colour"])
        answer = position_answer(obj["position"])
    elif qtype in ("colour", "position"):
        qtype, obj = "colour", rng.choice(objects)
        question, answer = QUESTION_TEMPLATES["colour"].format(position=obj["position"]), obj["colour"]
    else:
        colour = rng.choice(colours if rng.random() < 0.5 else list(COLOURS))
        question = QUESTION_TEMPLATES[qtype].format(colour=colour)
        count = colours.count(colour)
        answer = ("no", "yes")[count > 0] if qtype == "presence" else NUMBERS[count]
    return {"type": qtype, "question": question, "answer": answer}


def draw_scene(objects: list[dict], size: int, background=BACKGROUND) -> Image.Image:
    """Render objects to an RGB image of `size` x `size` pixels."""
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x0, y0, x1, y1 = obj["bbox"]
        box, fill = (x0, y0, x1 - 1, y1 - 1), COLOURS[obj["colour"]]
        if obj["shape"] == "circle":
            draw.ellipse(box, fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
    return image


# ---------------------------------------------------------------------------------------------
# Splits: balanced (type, answer) plan -> records + images.
# ---------------------------------------------------------------------------------------------


def balanced(rng: random.Random, options, n: int) -> list:
    """`n` items covering `options` as evenly as possible (counts differ by at most 1), shuffled."""
    options = list(options)
    items = options * (n // len(options)) + rng.sample(options, n % len(options))
    rng.shuffle(items)
    return items


def plan_split(rng: random.Random, n: int, config: ShapesConfig) -> list[tuple[str, str]]:
    """(type, answer) per record: types balanced, and answers balanced within each type."""
    types = balanced(rng, config.types, n)
    answers = {t: iter(balanced(rng, answer_options(t, config), types.count(t))) for t in config.types}
    return [(t, next(answers[t])) for t in types]


def conversations_for(qa: list[dict]) -> list[dict]:
    """LLaVA `conversations`: the image tag opens the first human turn, one gpt turn per question."""
    turns = []
    for i, turn in enumerate(qa):
        prefix = IMAGE_TOKEN + "\n" if i == 0 else ""
        turns.append({"from": "human", "value": prefix + turn["question"]})
        turns.append({"from": "gpt", "value": turn["answer"]})
    return turns


def make_record(rng: random.Random, record_id: str, qtype: str, answer: str, config: ShapesConfig) -> dict:
    """One record (without writing its image) whose first turn is a `qtype` question with `answer`."""
    objects, question = _scene_for(rng, qtype, answer, config)
    qa = [{"type": qtype, "question": question, "answer": answer}]
    qa += [ask_about(rng, objects, rng.choice(config.types)) for _ in range(config.turns - 1)]
    return {
        "id": record_id,
        "image": None,  # set by the caller, which knows the folder layout
        "conversations": conversations_for(qa),
        "type": qtype,
        "answer": answer,
        "qa": qa,
        "objects": objects,
    }


def generate_split(split: str, n: int, config: ShapesConfig):
    """Yield `(record, image)` for the `n` records of `split`; deterministic in (config, split)."""
    rng = random.Random(f"{config.seed}:{split}")
    for i, (qtype, answer) in enumerate(plan_split(rng, n, config)):
        record = make_record(rng, f"{split}-{i:06d}", qtype, answer, config)
        record["image"] = f"images/{split}/{record['id']}.png"
        yield record, draw_scene(record["objects"], config.image_size)


def write_split(out_dir: str | Path, split: str, n: int, config: ShapesConfig) -> Path:
    """Write `out_dir/<split>.json` and its PNGs under `out_dir/images/<split>/`; returns the JSON path."""
    out_dir = Path(out_dir)
    (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    records = []
    for record, image in generate_split(split, n, config):
        image.save(out_dir / record["image"], compress_level=1)  # ~2x faster than the default level
        records.append(record)
    path = out_dir / f"{split}.json"
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path


def make_shapes_dataset(out_dir: str | Path, sizes: dict[str, int], config: ShapesConfig | None = None) -> dict:
    """Write every split in `sizes` (e.g. `{"train": 4000, "validation": 500, "test": 500}`) to `out_dir`.

    The image folder to pass to the LLaVA loader is `out_dir` itself. Returns `{split: json_path}`.
    """
    config = config or ShapesConfig()
    paths = {split: write_split(out_dir, split, n, config) for split, n in sizes.items()}
    meta = {"config": {**config.__dict__, "types": list(config.types)}, "sizes": sizes}
    (Path(out_dir) / "shapes_config.json").write_text(json.dumps(meta, indent=1) + "\n")
    return paths
