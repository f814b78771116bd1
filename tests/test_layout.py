"""The layout holds: the library never reaches into the demo world, and its core imports no plotting, metrics or
logging package (those are the `[bench]` and `[train]` extras)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = "lvprune_shapes"


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` of `path` names, relative ones resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            names.add(".".join(part for part in (base, node.module) if part))
    return names


def test_no_library_module_imports_the_demo_world():
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in imported_modules(path) if n.split(".")[0] == DEMO)
                 for path in (ROOT / "lvprune").rglob("*.py")}
    assert not {path: names for path, names in offenders.items() if names}
    assert any(n.startswith("lvprune.") for n in imported_modules(ROOT / DEMO / "job.py"))  # the other way is fine


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return {name.split(".")[0] for name in json.loads(out.stdout.splitlines()[-1])}


def test_the_library_runs_without_the_demo_world_and_its_core_without_the_extras():
    everything = loaded_after("import lvprune, lvprune.train, lvprune.bench.harness, lvprune.flops, lvprune.cli")
    assert DEMO not in everything
    core = loaded_after("import lvprune")
    assert not core & {"matplotlib", "torchmetrics", "tensorboard", DEMO}


def test_the_declared_lower_bounds_are_the_oldest_set_ci_installs():
    """pyproject.toml's `>=` bounds (core and the extras CI installs) equal constraints-oldest.txt's pins."""
    import re
    import tomllib

    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + [r for name in ("train", "bench", "deepspeed", "test") for r in extras[name]]

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {}
    for requirement in requirements:
        name, bound = re.match(r"([\w.-]+)\s*>=\s*([\w.]+)", requirement).groups()
        if canonical(name) != "torch":  # torch comes from a torch constraints file (CPU build or video set)
            declared[canonical(name)] = bound
    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints-oldest.txt").read_text().splitlines()]
    pinned = {canonical(name): version for name, version in (line.split("==") for line in lines if line)}
    assert pinned == {name: pinned.get(name) for name in declared}, "a pin without a declared bound"
    assert {name: Version(pinned[name]) for name in declared} == {name: Version(b) for name, b in declared.items()}
