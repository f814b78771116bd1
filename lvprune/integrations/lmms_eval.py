"""An lmms-eval model that is any supported base with any lvprune setting.

    lmms-eval --model lvprune --model_args pretrained=llava-hf/llava-1.5-7b-hf,pruner=me/pruner,plphp_r=0.4 \\
        --tasks mme --batch_size 8

`pretrained` is the base (a folder or a Hub id); `pruner` an LVPruning pruner (optional), `keep_ratios` its
inference ratios (`0.5:0.3:0.1`); PLPHP's settings by the names every lvprune command line uses (`plphp_r`,
`plphp_delta_r`, `plphp_alpha`, `plphp_beta`, `plphp_start_layer`, `plphp_allocation`, `plphp_queries`: any one
turns PLPHP on, the rest from `PLPHPConfig`); `dtype` (`float32`, `bfloat16`, ...) and `device` (`cpu`, `cuda`, ...). lmms-eval finds the model
through the `lmms_eval.models` entry point lvprune's package declares.

Generation requests are answered in batches of `batch_size` (left padding, greedy unless the task asks
otherwise); log-likelihood requests one at a time, scored over the kept rows (`model(..., labels=...)`, the
masked training forward's loss), so both kinds see the same pruning.
"""

from __future__ import annotations

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ..data.llava_format import IGNORE_INDEX
from ..inference import load_pruned_model
from ..plphp import PLPHPOptions
from ..settings import from_dict

DEFAULT_MAX_NEW_TOKENS = 32


def manifest():
    """The lmms-eval registration of `--model lvprune` (the `lmms_eval.models` entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="lvprune", simple_class_path=f"{__name__}.LVPrune")


def parse_plphp(model_args: dict):
    """The `plphp_*` model_args as a `PLPHPConfig` (None when none is given); an unknown key names the closest."""
    return from_dict(PLPHPOptions, model_args, source="lvprune model_args").plphp_config()


def parse_ratios(value) -> list[float] | None:
    """`0.5:0.3:0.1` (or none) as keep ratios."""
    return None if value in (None, "", "none", "None") else [float(v) for v in str(value).split(":")]


class LVPrune(lmms):
    """`pretrained` pruned with `pruner` (LVPruning) and/or `plphp`, answering lmms-eval's requests."""

    def __init__(self, pretrained: str, pruner: str | None = None, keep_ratios=None, batch_size: int | str = 1,
                 device: str = "cpu", dtype: str = "float32", **plphp) -> None:
        super().__init__()
        from transformers import AutoProcessor

        self.model = load_pruned_model(pretrained, pruner, keep_ratios=parse_ratios(keep_ratios),
                                       plphp=parse_plphp(plphp), dtype=getattr(torch, dtype)).to(device)
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
