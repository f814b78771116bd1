"""Loading a pruned model to serve it: `load_pruned_model(base, pruner, press=...)`, one call from a folder or a
Hub id to a stock model whose `forward` and `generate` prune (`lvprune.core.pruning.Pruning`)."""

from __future__ import annotations

from lvprune.core.protocols import CachePress
from lvprune.core.pruning import Pruning, _one_press
from lvprune.families import backbone_for
from lvprune.methods.lvpruning import LVPrunerModel


def load_pruned_model(base, pruner=None, *, keep_ratios=None, press: CachePress | None = None,
                      plphp: CachePress | None = None, **kwargs):
    """Load a vision-language model whose `forward` and `generate` prune vision tokens.

    Args:
        base: a path, a Hub id or a loaded model of a supported family (loaded with
            `AutoModelForImageTextToText`; an unsupported family is refused before its weights load).
        pruner: a path or a Hub id of an LVPruning pruner, any stage pruner (an `LVPrunerModel`, a
            `FastVPruner`, ...), or None.
        keep_ratios: inference ratios for the pruner's stages (default: its own).
        press: a cache press (`PLPHPPress(...)`, ...), or None; plphp: its deprecated name.
        **kwargs: passed to `from_pretrained` of the base (`dtype`, `device_map`, ...); the pruner follows the
            base's dtype and device.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    press = _one_press(press, plphp)
    if isinstance(base, (str, bytes)) or hasattr(base, "__fspath__"):
        backbone_for(AutoConfig.from_pretrained(base, **_config_kwargs(kwargs)))
        base = AutoModelForImageTextToText.from_pretrained(base, **kwargs)
    base.eval()
    if isinstance(pruner, (str, bytes)) or hasattr(pruner, "__fspath__"):
        pruner = LVPrunerModel.from_pretrained(pruner)
    if pruner is not None:
        pruner.config.check_base(base.config)
        pruner.to(device=base.device, dtype=base.dtype)
    Pruning(base, pruner, keep_ratios=keep_ratios, press=press).attach()
    return base


def _config_kwargs(kwargs: dict) -> dict:
    """The `from_pretrained` arguments that also locate a config (revision, cache, token, ...)."""
    keys = ("revision", "cache_dir", "token", "local_files_only", "trust_remote_code", "subfolder")
    return {key: kwargs[key] for key in keys if key in kwargs}
