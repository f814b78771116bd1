"""The README's serving snippet runs as written, and does what it says."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def serving_snippet() -> str:
    section = README.read_text().split("## Serving a pruned model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_serving_snippet_runs_as_written(capsys):
    namespace = {}
    exec(compile(serving_snippet(), str(README), "exec"), namespace)
    answers, fraction = capsys.readouterr().out.splitlines()
    assert answers == "['red', 'yes']"  # the shipped base reads the drawn square
    assert 0 < float(fraction.split()[2].rstrip("%")) < 100
    assert namespace["model"].lvprune is None  # unpruned again at the end


def test_supported_models_table_lists_every_registered_family():
    """The README's table has one row per family in the registry, naming a model of its `tested_with`."""
    from lvprune.families import supported

    section = README.read_text().split("## Supported models", 1)[1].split("\n## ", 1)[0]
    rows = {cells[1]: cells for cells in (line.split(" | ") for line in section.splitlines()
                                          if line.startswith("| ") and "`" in line)}
    rows.pop("`model_type`")  # the header
    for model_type, backbone in supported().items():
        row = rows.get(f"`{model_type}`")
        assert row is not None, f"no README row for {model_type}"
        assert row[0] == f"| {backbone.family}" and row[2] in backbone.tested_with, row
    assert len(rows) == len(supported())
