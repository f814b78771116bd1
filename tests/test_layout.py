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
    everything = loaded_after("import lvprune, lvprune.training, lvprune.bench.harness, lvprune.flops, lvprune.cli")
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


# ------------------------------------------------------------------------------ one folder per concern


def module_level_imports(path: Path) -> set[str]:
    """The lvprune modules `path` imports when it is imported (not the imports inside functions)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(inner, ast.Import):
                names.update(alias.name for alias in inner.names)
            elif isinstance(inner, ast.ImportFrom) and inner.module and not inner.level:
                names.add(inner.module)
                names.update(f"{inner.module}.{alias.name}" for alias in inner.names)
    return {name for name in names if name.split(".")[0] == "lvprune"}


def module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_the_core_imports_no_method_even_through_another_module():
    """Everything `lvprune.core` imports, and what that imports, stays out of `lvprune.methods` (and out of the
    trainer, the data and the benchmark)."""
    seen, todo = set(), [f"lvprune.core.{path.stem}" for path in (ROOT / "lvprune" / "core").glob("*.py")]
    while todo:
        name = todo.pop()
        path = module_path(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo += [n for n in module_level_imports(path) if n != "lvprune"]  # `lvprune` itself is the public API
    reached = {name for name in seen if module_path(name) is not None}
    assert {"lvprune.core.pruning", "lvprune.families", "lvprune.core.contract"} <= reached
    assert not {n for n in reached if n.split(".")[1] in ("methods", "training", "data", "bench")}, sorted(reached)


def test_every_method_file_is_registered_by_name():
    from lvprune.methods import METHODS

    files = {f"lvprune.methods.{path.stem}" for path in (ROOT / "lvprune" / "methods").glob("*.py")}
    files |= {f"lvprune.methods.{path.parent.name}" for path in (ROOT / "lvprune" / "methods").glob("*/__init__.py")}
    assert {method.module for method in METHODS.values()} == files - {"lvprune.methods.__init__"}
    assert {name: method.kind for name, method in METHODS.items()} == {
        "lvpruning": "stage", "random": "stage", "fastv": "stage", "divprune": "stage", "pdrop": "stage", "dart": "stage",
        "visionzip": "stage",
        "plphp": "press", "kvpress": "press"}


def test_the_top_level_holds_folders_and_a_few_entry_points():
    modules = sorted(path.name for path in (ROOT / "lvprune").glob("*.py"))
    assert modules == ["__init__.py", "cli.py", "deprecated.py", "flops.py", "hub.py", "serving.py"]
    folders = sorted(path.name for path in (ROOT / "lvprune").iterdir() if (path / "__init__.py").is_file())
    assert folders == ["bench", "core", "data", "families", "integrations", "methods", "training", "utils"]
