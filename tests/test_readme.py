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
