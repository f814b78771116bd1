"""An lmms-eval model that is any supported base with any lvprune setting.

    lmms-eval --model lvprune --model_args pretrained=llava-hf/llava-1.5-7b-hf,pruner=me/pruner,plphp_r=0.4 \\
        --tasks mme --batch_size 8
    lmms-eval --model lvprune --model_args pretrained=...,method=fastv,fastv_keep_ratio=0.25,press=kvpress,\\
        kvpress_scorer=snapkv --tasks mme

`pretrained` is the base (a folder or a Hub id); `pruner` an LVPruning pruner (optional), `keep_ratios` its
inference ratios (`0.5:0.3:0.1`). Any registered method (`lvprune.methods`) by name: `method` a stage pruner
(`fastv`, `dart`, `divprune`, `visionzip`, `pdrop`, `random`; `lvpruning` is `pruner`), `press` a cache press (`plphp`, `kvpress`), each method's options
prefixed by its name (`fastv_after_layer`, `kvpress_compression_ratio`, ...); `keep=64` sets a one-stage method's
budget as vision tokens per image, as the papers state it (`64 / 576` for LLaVA-1.5), where every image becomes
the same number of tokens. PLPHP's settings are those every
lvprune command line uses (`plphp_r`, `plphp_delta_r`, `plphp_alpha`, `plphp_beta`, `plphp_start_layer`,
`plphp_allocation`, `plphp_queries`): any one turns PLPHP on, the rest from `PLPHPPress`. `dtype` (`float32`,
`bfloat16`, ...) and `device` (`cpu`, `cuda`, ...). lmms-eval finds the model through the `lmms_eval.models`
entry point lvprune's package declares.

Generation requests are answered in batches of `batch_size` (left padding, greedy unless the task asks
otherwise); log-likelihood requests one at a time, scored over the kept rows (`model(..., labels=...)`, the
masked training forward's loss), so both kinds see the same pruning.
"""

from __future__ import annotations

import ast

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from lvprune.data.llava_format import IGNORE_INDEX
from lvprune.families import backbone_for
from lvprune.flops import vision_tokens_per_image
from lvprune.methods import build
from lvprune.methods import method as registered
from lvprune.methods.plphp import PLPHPOptions
from lvprune.serving import load_pruned_model
from lvprune.utils.command_line import from_dict

DEFAULT_MAX_NEW_TOKENS = 32


def manifest():
    """The lmms-eval registration of `--model lvprune` (the `lmms_eval.models` entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="lvprune", simple_class_path=f"{__name__}.LVPrune")


def parse_plphp(model_args: dict):
    """The `plphp_*` model_args as a `PLPHPPress` (None when none is given); an unknown key names the closest."""
    return from_dict(PLPHPOptions, model_args, source="lvprune model_args").plphp_press()


def parse_ratios(value) -> list[float] | None:
    """`0.5:0.3:0.1` (or none) as keep ratios."""
    return None if value in (None, "", "none", "None") else [float(v) for v in str(value).split(":")]


def _value(text):
    """A model_args value as Python reads it (`0.4` a float, `2` an int, `true` a bool, `0.5:0.25` a tuple: commas
    separate model_args), else the string."""
    if not isinstance(text, str):
        return text
    if ":" in text:
        parts = [_value(part) for part in text.split(":")]
        return tuple(parts) if all(isinstance(p, (int, float)) for p in parts) else text
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def tokens_per_image(base_config) -> int:
    """The vision tokens every image of this base becomes (a family whose images are all the tower's tile:
    `Backbone.typical_image_size` None); refused where the count depends on the image's size."""
    backbone = backbone_for(base_config)
    if backbone.typical_image_size is not None:
        raise ValueError(f"lvprune model_args: keep= is a count per image, and {backbone.family} turns images of "
                         "different sizes into different counts; pass the method's NAME_keep_ratio instead.")
    return vision_tokens_per_image(base_config)


def _keep_as_ratio(base_config, method: str | None, options: dict) -> None:
    """`keep=K` (vision tokens per image) as the one-stage method's `NAME_keep_ratio` (K / tokens per image)."""
    keep = _value(options.pop("keep"))
    if method is None or "keep_ratio" not in registered(method).options():
        raise ValueError(f"lvprune model_args: keep= is the budget of a one-stage method (method=divprune, "
                         f"visionzip, fastv or dart), not of {method or 'no method'}; a multi-stage one takes "
                         "NAME_keep_ratios.")
    if f"{method}_keep_ratio" in options:
        raise ValueError(f"lvprune model_args: pass keep= or {method}_keep_ratio=, not both.")
    tokens = tokens_per_image(base_config)
    if not isinstance(keep, int) or not 0 <= keep <= tokens:
        raise ValueError(f"lvprune model_args: keep={keep!r} must be a whole number of tokens in 0..{tokens}.")
    options[f"{method}_keep_ratio"] = keep / tokens


def parse_methods(base_config, pruner, method: str | None, press: str | None, options: dict):
    """The stage pruner and the cache press the model_args name (`method=`, `press=`, `NAME_option=`, `keep=`);
    PLPHP from its `plphp_*` fields alone too. Options of no named method are refused, naming what is accepted."""
    options = dict(options)
    if "keep" in options:
        _keep_as_ratio(base_config, method, options)
    plphp = {key: options.pop(key) for key in list(options) if key.startswith("plphp_")}
    stage = None
    if method == "lvpruning":
        raise ValueError("lvprune model_args: LVPruning is pruner=FOLDER_OR_HUB_ID, not method=lvpruning.")
    if method is not None:
        if pruner is not None:
            raise ValueError(f"lvprune model_args: pass pruner= (LVPruning) or method={method}, not both.")
        if registered(method).kind != "stage":
            raise ValueError(f"lvprune model_args: {method} is a cache press; pass it as press={method}.")
        stage = build(method, base_config, **_prefixed(options, method))
    cache_press = parse_plphp(plphp)
    if press is not None and press != "plphp":
        if cache_press is not None:
            raise ValueError(f"lvprune model_args: plphp_* options and press={press} both name a cache press.")
        if registered(press).kind != "press":
            raise ValueError(f"lvprune model_args: {press} is a stage pruner; pass it as method={press}.")
        cache_press = build(press, base_config, **_prefixed(options, press))
    elif press == "plphp" and cache_press is None:
        cache_press = build("plphp", base_config)
    if options:
        raise ValueError(f"lvprune model_args: unknown {', '.join(sorted(options))} (a method's options are "
                         "prefixed by its name, for the method= or press= given).")
    return stage, cache_press


def _prefixed(options: dict, name: str) -> dict:
    """The options `NAME_x` (popped from `options`) as `x`, their values read."""
    keys = [key for key in options if key.startswith(name + "_")]
    return {key.removeprefix(name + "_"): _value(options.pop(key)) for key in keys}


class LVPrune(lmms):
    """`pretrained` pruned with `pruner` (LVPruning) or another stage pruner (`method`), and/or a cache press
    (`press`, or PLPHP's `plphp_*` fields), answering lmms-eval's requests."""

    def __init__(self, pretrained: str, pruner: str | None = None, keep_ratios=None, method: str | None = None,
                 press: str | None = None, batch_size: int | str = 1, device: str = "cpu", dtype: str = "float32",
                 **options) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoProcessor

        stage, cache_press = parse_methods(AutoConfig.from_pretrained(pretrained), pruner, method, press, options)
        self.model = load_pruned_model(pretrained, pruner if stage is None else stage,
                                       keep_ratios=parse_ratios(keep_ratios), press=cache_press,
                                       dtype=getattr(torch, dtype)).to(device)
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues each prompt from its end
        self.batch_size_per_gpu = int(batch_size)
        self.device_name = device

    # ---------------------------------------------------------------- prompts

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        return [v for v in (visuals or []) if v is not None]

    def _messages(self, context: str, images: list) -> list[dict]:
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": context}]
        return [{"role": "user", "content": content}]

    def _inputs(self, prompts: list[str], images: list[list]) -> dict:
        flat = [image for sample in images for image in sample]
        inputs = self.processor(text=prompts, images=flat or None, padding=True, return_tensors="pt")
        return {k: v.to(self.device_name) if hasattr(v, "to") else v for k, v in inputs.items()}

    # ---------------------------------------------------------------- requests

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        tokenizer = self.processor.tokenizer
        for start in tqdm(range(0, len(requests), self.batch_size_per_gpu), desc="lvprune: generating",
                          disable=len(requests) <= self.batch_size_per_gpu):
            chunk = [request.args for request in requests[start : start + self.batch_size_per_gpu]]
            settings = dict(chunk[0][1])
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            images = [self._visuals(*args[2:]) for args in chunk]
            prompts = [self.processor.apply_chat_template(self._messages(args[0], visuals), add_generation_prompt=True)
                       for args, visuals in zip(chunk, images)]
            inputs = self._inputs(prompts, images)
            do_sample = bool(settings.get("do_sample", False)) and settings.get("temperature", 0) > 0
            with torch.no_grad():
                out = self.model.generate(**inputs, max_new_tokens=int(settings.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
                                          do_sample=do_sample, pad_token_id=tokenizer.pad_token_id)
            for text in tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True):
                for stop in until:
                    if stop and stop in text:
                        text = text[: text.index(stop)]
                answers.append(text)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results = []
        for context, target, doc_to_visual, doc_id, task, split in tqdm([r.args for r in requests],
                                                                        desc="lvprune: scoring", disable=len(requests) < 2):
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            images = [self._visuals(doc_to_visual, doc_id, task, split)]
            prompt = self.processor.apply_chat_template(self._messages(context, images[0]), add_generation_prompt=True)
            inputs = self._inputs([prompt + continuation], images)
            n_prompt = len(self._inputs([prompt], images)["input_ids"][0])
            ids = inputs["input_ids"]
            labels = torch.full_like(ids, IGNORE_INDEX)
            labels[:, n_prompt:] = ids[:, n_prompt:]
            n = int((labels != IGNORE_INDEX).sum())
            with torch.no_grad():
                out = self.model(**inputs, labels=labels)
            # The continuation's tokens are the last rows (text is never pruned): row i predicts token i + 1.
            greedy = bool((out.logits[0, -n - 1 : -1].argmax(-1) == ids[0, -n:]).all())
            results.append((-float(out.loss) * n, greedy))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("lvprune answers single-round requests (generate_until, loglikelihood).")
