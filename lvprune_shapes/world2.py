"""The second reference world's data: several images a prompt, long answers, conversations.

The first world (`lvprune_shapes.dataset`) asks one short question about one image, so its answer is computed in
the prefill and nothing is allocated between images. This one asks what pruning is for, about the same kind of
scenes (coloured shapes, one per cell of a 3x3 grid):

| task      | images | question                           | answer                                         |
| --------- | ------ | ---------------------------------- | ---------------------------------------------- |
| `single`  | 1      | a first-world question             | as there (`red`, `in the north`, `yes`, `two`) |
| `which`   | 2-4    | Which image has a red object?      | `the third` (exactly one image has one)        |
| `images`  | 2-4    | How many images have a red object? | `zero` ... `four`                              |
| `compare` | 2      | Which image has more red objects?  | `the first` / `the second` (counts differ)     |
| `list`    | 1      | List every object.                 | `red in the north, blue in the centre, ...`    |

`list` answers name 3-5 objects, row-major (25-43 tokens), scored by item F1 (`lvprune.bench.metrics.item_f1`);
the others by exact match.

Every task's answer is drawn first, balanced within its split, and the images are built to match it, so the
question alone does not predict the answer. A record with `turns > 1` is a conversation: its later turns ask
other questions (of the tasks its number of images allows) about the same images, each answered in the
conversation's order; a benchmark generates each answer from the cache of the turns before.

A record::

    {"id": "test-000003", "image": ["images/test/test-000003-0.png", "images/test/test-000003-1.png"],
     "conversations": [{"from": "human", "value": "<image>\\n<image>\\nWhich image has more red objects?"},
                       {"from": "gpt", "value": "the second"}, ...],
     "task": "compare", "answer": "the second",
     "qa": [{"task": "compare", "question": "...", "answer": "the second"}, ...],
     "scenes": [[{"shape": ..., "colour": ..., "position": ..., "bbox": [...]}, ...], ...]}

`image` is a list when a record has several images (the loader's multi-image form), a path otherwise.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from lvprune_shapes.dataset import (
    COLOURS, IMAGE_TOKEN, NUMBERS, POSITIONS, QUESTION_TYPES, ShapesConfig, _place, _scene_for, ask_about, balanced,
    draw_scene,
)
from lvprune_shapes.dataset import answer_options as first_world_options
from lvprune_shapes.dataset import vocabulary as first_world_vocabulary

TASKS = ("single", "which", "images", "compare", "list")
ORDINALS = ("first", "second", "third", "fourth")
QUESTIONS = {
    "which": "Which image has a {colour} object?",
    "images": "How many images have a {colour} object?",
    "compare": "Which image has more {colour} objects?",
    "list": "List every object.",
}
ITEM_SEPARATOR = ", "


@dataclass(frozen=True)
class World2Config:
    """Generator settings; every split draws from its own seeded stream (`seed`, split name).

    image_size, object_size: as the first world's (`ShapesConfig`); small objects make fine detail matter.
    max_images: most images a multi-image prompt holds (2..4). turns: questions a record asks (> 1: a
    conversation). tasks: the first turn's tasks, balanced; later turns ask those of them the record's number of
    images allows. turns_at_most: `turns` is a ceiling, not a count: a record stops asking where 50 draws find
    no new question about its scenes (two images hold a dozen; a training set wants as many as there are).
    """

    image_size: int = 96
    object_size: tuple[float, float] = (0.25, 0.4)
    max_images: int = 4
    turns: int = 1
    tasks: tuple[str, ...] = TASKS
    seed: int = 0
    turns_at_most: bool = False

    def __post_init__(self):
        if not 2 <= self.max_images <= len(ORDINALS):
            raise ValueError(f"max_images must be in 2..{len(ORDINALS)}, got {self.max_images}")
        if self.turns < 1:
            raise ValueError(f"turns must be >= 1, got {self.turns}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")

    def shapes(self) -> ShapesConfig:
        return ShapesConfig(image_size=self.image_size, object_size=self.object_size, seed=self.seed)


def pruner_training_world(image_size: int, seed: int = 0) -> World2Config:
    """The conversations a pruner trains on (the main job's, the benchmark's `--pruner train`): up to 3 turns about
    1-4 images, as many as each scene holds (some hold fewer than 3 distinct questions; exactly 3 refuses them)."""
    return World2Config(image_size=image_size, turns=3, turns_at_most=True, seed=seed)


def vocabulary() -> list[str]:
    """The first world's words plus this one's questions and answers, sorted."""
    words = set(first_world_vocabulary()) | set(ORDINALS) | {"List", "every", "object", "in", "the"}
    words |= {w for q in QUESTIONS.values() for w in q.replace("?", " ").replace(".", " ").split() if "{" not in w}
    return sorted(words)


def ordinal(index: int) -> str:
    """The answer naming image `index` (0-based): "the first", ..."""
    return f"the {ORDINALS[index]}"


def list_answer(objects: list[dict]) -> str:
    """Every object as "<colour> in the <cell>", in the grid's row-major order, joined by ", "."""
    ordered = sorted(objects, key=lambda o: POSITIONS.index(o["position"]))
    return ITEM_SEPARATOR.join(f"{o['colour']} in the {o['position']}" for o in ordered)


def answer_options(task: str, config: World2Config) -> tuple[str, ...]:
    """The answers a first turn of `task` is balanced over (`list` and `single`: their own plans)."""
    if task == "which":
        return tuple(ordinal(i) for i in range(config.max_images))
    if task == "images":
        return NUMBERS[: config.max_images + 1]
    if task == "compare":
        return (ordinal(0), ordinal(1))
    if task == "list":
        return tuple(str(n) for n in range(3, 6))  # objects in the scene: answers of 3-5 items
    return QUESTION_TYPES  # single: the first-world question type, whose answer `_scene_for` balances in turn


# ---------------------------------------------------------------------------------------------
# Scenes built to an answer
# ---------------------------------------------------------------------------------------------


def scene_with(rng: random.Random, named: str, count: int, config: World2Config) -> list[dict]:
    """A scene of 2-5 objects in distinct cells holding exactly `count` objects of colour `named`."""
    total = max(count, rng.randint(2, 5))
    colours = [named] * count + [rng.choice([c for c in COLOURS if c != named]) for _ in range(total - count)]
    objects = _place(rng, colours, config.image_size, rng.sample(range(9), total), config.object_size)
    rng.shuffle(objects)
    return objects


def first_turn(rng: random.Random, task: str, option: str, config: World2Config) -> tuple[list, dict]:
    """The scenes and the first turn of a `task` record whose answer (or plan) is `option`."""
    if task == "single":
        kind = option
        answer = rng.choice(first_world_options(kind, config.shapes()))
        objects, question = _scene_for(rng, kind, answer, config.shapes())
        return [objects], {"task": "single", "type": kind, "question": question, "answer": answer}
    named = rng.choice(list(COLOURS))
    if task == "which":
        target = ORDINALS.index(option.split()[-1])
        n = rng.randint(max(2, target + 1), config.max_images)
        scenes = [scene_with(rng, named, 1 if i == target else 0, config) for i in range(n)]
    elif task == "images":
        having = NUMBERS.index(option)
        n = rng.randint(max(2, having), config.max_images)
        holders = set(rng.sample(range(n), having))
        scenes = [scene_with(rng, named, rng.randint(1, 2) if i in holders else 0, config) for i in range(n)]
    elif task == "compare":
        more, fewer = sorted(rng.sample(range(4), 2), reverse=True)
        counts = (more, fewer) if option == ordinal(0) else (fewer, more)
        scenes = [scene_with(rng, named, c, config) for c in counts]
    else:  # list
        objects = _place(rng, [rng.choice(list(COLOURS)) for _ in range(int(option))], config.image_size,
                         rng.sample(range(9), int(option)), config.object_size)
        return [objects], {"task": "list", "question": QUESTIONS["list"], "answer": list_answer(objects)}
    turn = {"task": task, "question": QUESTIONS[task].format(colour=named), "answer": answer_for(task, named, scenes)}
    return scenes, turn


def answer_for(task: str, named: str, scenes: list[list[dict]]) -> str:
    """The answer of a multi-image `task` about colour `named`, read off the scenes (None: no single answer)."""
    counts = [sum(o["colour"] == named for o in scene) for scene in scenes]
    if task == "which":
        having = [i for i, c in enumerate(counts) if c]
        return ordinal(having[0]) if len(having) == 1 else None
    if task == "images":
        return NUMBERS[sum(c > 0 for c in counts)]
    if len(counts) != 2 or counts[0] == counts[1]:  # compare
        return None
    return ordinal(int(counts[1] > counts[0]))


def later_turn(rng: random.Random, scenes: list[list[dict]], asked: set, tasks: tuple[str, ...] = TASKS) -> dict:
    """Another question about the same scenes, of one of `tasks` their number allows (any such task where none
    of `tasks` is), not asked before in the record."""
    one = ("single", "list") if len(scenes) == 1 else ("which", "images", "compare")
    allowed = tuple(t for t in one if t in tasks) or one
    for _ in range(50):
        if len(scenes) == 1:
            task = rng.choice(allowed)
            if task == "list":
                turn = {"task": "list", "question": QUESTIONS["list"], "answer": list_answer(scenes[0])}
            else:
                turn = {"task": "single", **ask_about(rng, scenes[0], rng.choice(QUESTION_TYPES))}
        else:
            task = rng.choice(allowed)
            present = sorted({o["colour"] for scene in scenes for o in scene})
            named = rng.choice(present if rng.random() < 0.7 else list(COLOURS))
            answer = answer_for(task, named, scenes)
            if answer is None:
                continue
            turn = {"task": task, "question": QUESTIONS[task].format(colour=named), "answer": answer}
        if turn["question"] not in asked:
            return turn
    raise LookupError("no new question about these scenes")  # a dozen questions for two images, 50 draws


def conversations_for(qa: list[dict], images: int) -> list[dict]:
    """LLaVA `conversations`: one `<image>` tag per image opens the first human turn."""
    turns = []
    for i, turn in enumerate(qa):
        prefix = (IMAGE_TOKEN + "\n") * images if i == 0 else ""
        turns += [{"from": "human", "value": prefix + turn["question"]}, {"from": "gpt", "value": turn["answer"]}]
    return turns


def plan_split(rng: random.Random, n: int, config: World2Config) -> list[tuple[str, str]]:
    """(task, option) per record: tasks balanced, and each task's answers (or plans) balanced within it."""
    tasks = balanced(rng, config.tasks, n)
    options = {t: iter(balanced(rng, answer_options(t, config), tasks.count(t))) for t in config.tasks}
    return [(t, next(options[t])) for t in tasks]


def generate_split(split: str, n: int, config: World2Config):
    """Yield `(record, images)` for the `n` records of `split`; deterministic in (config, split)."""
    rng = random.Random(f"world2:{config.seed}:{split}")
    for i, (task, option) in enumerate(plan_split(rng, n, config)):
        scenes, turn = first_turn(rng, task, option, config)
        qa = [turn]
        try:
            while len(qa) < config.turns:
                qa.append(later_turn(rng, scenes, {t["question"] for t in qa}, config.tasks))
        except LookupError:
            if not config.turns_at_most:
                raise
        record_id = f"{split}-{i:06d}"
        paths = [f"images/{split}/{record_id}-{k}.png" for k in range(len(scenes))]
        record = {"id": record_id, "image": paths if len(paths) > 1 else paths[0],
                  "conversations": conversations_for(qa, len(scenes)), "task": task, "answer": turn["answer"],
                  "qa": qa, "scenes": scenes}
        yield record, [draw_scene(scene, config.image_size) for scene in scenes]


def make_world2_dataset(out_dir: str | Path, sizes: dict[str, int], config: World2Config | None = None) -> dict:
    """Write every split in `sizes` to `out_dir/<split>.json` and the PNGs under `out_dir/images/<split>/`
    (`out_dir` is the loader's image folder). Returns `{split: json_path}`."""
    config = config or World2Config()
    out_dir, paths = Path(out_dir), {}
    for split, n in sizes.items():
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        records = []
        for record, images in generate_split(split, n, config):
            names = record["image"] if isinstance(record["image"], list) else [record["image"]]
            for name, image in zip(names, images):
                image.save(out_dir / name, compress_level=1)
            records.append(record)
        paths[split] = out_dir / f"{split}.json"
        paths[split].write_text(json.dumps(records, indent=1) + "\n")
    meta = {"world": 2, "config": {**config.__dict__, "tasks": list(config.tasks)}, "sizes": sizes}
    (out_dir / "world_config.json").write_text(json.dumps(meta, indent=1) + "\n")
    return paths
