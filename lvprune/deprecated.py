"""The import paths and names of lvprune 0.1, kept for one release: each still works, with a `FutureWarning`
naming its new home, and goes in lvprune 0.3.

- Modules: `lvprune.plphp` is `lvprune.methods.plphp`, `lvprune.backbones` is `lvprune.families`, ... (`MOVED`).
  A meta-path finder answers the old names with a module that forwards every attribute to the new one(s).
- Names: `PLPHPConfig` is `PLPHPPress` (`RENAMED`); `Pruning(plphp=...)` is `Pruning(press=...)`
  (`lvprune.core.pruning`); `LayerStats.plphp_class` is `LayerStats.extras["plphp_class"]`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# Old module -> the new module(s) its names now live in (first match wins).
MOVED = {
    "lvprune.inference": ("lvprune.core.pruning", "lvprune.serving"),
    "lvprune.state": ("lvprune.core.pruning_state",),
    "lvprune.slots": ("lvprune.core.token_slots",),
    "lvprune.hooks": ("lvprune.core.layer_hooks",),
    "lvprune.attention": ("lvprune.core.attention",),
    "lvprune.cache": ("lvprune.core.pruned_cache",),
    "lvprune.decisions": ("lvprune.core.selection",),
    "lvprune.scoring": ("lvprune.core.pruned_loss",),
    "lvprune.generation": ("lvprune.core.generate_checks",),
    "lvprune.stats": ("lvprune.core.stats",),
    "lvprune.contract": ("lvprune.core.contract",),
    "lvprune.press": ("lvprune.core.protocols",),
    "lvprune.stage": ("lvprune.core.protocols", "lvprune.core.stages"),
    "lvprune.config": ("lvprune.methods.lvpruning.config", "lvprune.core.stages"),
    "lvprune.modeling": ("lvprune.methods.lvpruning.modules",),
    "lvprune.plphp": ("lvprune.methods.plphp",),
    "lvprune.calibration": ("lvprune.methods.plphp",),
    "lvprune.baselines": ("lvprune.methods.fastv", "lvprune.methods.random_pruning"),
    "lvprune.integrations.kvpress": ("lvprune.methods.kvpress",),
    "lvprune.files": ("lvprune.utils.atomic_files",),
    "lvprune.settings": ("lvprune.utils.command_line",),
    "lvprune.testing": ("lvprune.families.tiny",),
    "lvprune.checkpointing": ("lvprune.training.checkpoints",),
    "lvprune.backbones": ("lvprune.families",),
    "lvprune.train": ("lvprune.training",),
}
# Old packages whose submodules moved with them.
MOVED_PACKAGES = {"lvprune.backbones": "lvprune.families", "lvprune.train": "lvprune.training"}
RENAMED = {"PLPHPConfig": "PLPHPPress"}
REMOVAL = "lvprune 0.3"


def targets(old: str) -> tuple[str, ...] | None:
    """The new module(s) of old module `old`, or None if it did not move."""
    if old in MOVED:
        return MOVED[old]
    for package, new in MOVED_PACKAGES.items():
        if old.startswith(package + "."):
            return (new + old[len(package):],)
    return None


def renamed_attribute(module: str, name: str):
    """`module.name` for a name of `RENAMED`, with the warning; AttributeError otherwise."""
    if name in RENAMED:
        warnings.warn(f"{name} is now {RENAMED[name]} (the same class); the old name goes in {REMOVAL}.",
                      FutureWarning, stacklevel=3)
        return getattr(sys.modules[module], RENAMED[name])
    raise AttributeError(f"module {module!r} has no attribute {name!r}")


class _Forwarding(importlib.abc.Loader):
    """Loads an old module name as a module that forwards attribute reads to its new module(s)."""

    def __init__(self, new: tuple[str, ...]):
        self.new = new

    def create_module(self, spec):
        module = types.ModuleType(spec.name, f"Moved to {' and '.join(self.new)}.")
        new = self.new

        def forward(name: str):
            for target in new:
                found = importlib.import_module(target)
                if name in RENAMED and hasattr(found, RENAMED[name]):
                    return renamed_attribute(target, name)
                if hasattr(found, name):
                    return getattr(found, name)
            raise AttributeError(f"{spec.name} (now {' and '.join(new)}) has no attribute {name!r}")

        module.__getattr__ = forward
        module.__path__ = []  # a package, so its old submodules resolve through the finder too
        return module

    def exec_module(self, module) -> None:
        warnings.warn(f"{module.__name__} is now {' and '.join(self.new)}; the old path goes in {REMOVAL}.",
                      FutureWarning, stacklevel=2)

    def get_code(self, fullname):
        """`python -m OLD` (e.g. `accelerate launch -m lvprune.train`): run the new module as `__main__`."""
        return compile(f"import runpy, warnings\nwarnings.warn({fullname!r} + ' is now {self.new[0]}: run python "
                       f"-m {self.new[0]}; the old name goes in {REMOVAL}.', FutureWarning)\n"
                       f"runpy.run_module({self.new[0]!r}, run_name='__main__', alter_sys=True)\n",
                       fullname, "exec")


class _OldPaths(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = targets(fullname)
        if new is None:
            return None
        package = not fullname.endswith(".__main__")  # `python -m OLD` runs OLD.__main__, a module
        return importlib.util.spec_from_loader(fullname, _Forwarding(new), is_package=package)


def install() -> None:
    """Answer the old module paths (once per interpreter)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())
