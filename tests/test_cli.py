"""The command lines: `lvprune` dispatches to its commands; every entry point's options come from its settings
dataclass (`lvprune.utils.command_line`, transformers' HfArgumentParser): typed, choices listed, and a bad command line
exits 2 with one line naming the option."""

import re

import pytest

from lvprune import cli
from lvprune.bench import BenchConfig
from lvprune.utils.command_line import build_parser, parse
from lvprune_shapes.make_shapes import MakeShapesConfig


def error_line(capsys, run) -> str:
    """The last line a refused command line prints (argparse's `prog: error: ...`), after asserting exit 2."""
    with pytest.raises(SystemExit) as done:
        run()
    assert done.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bench_is_wired_into_the_console_script(tmp_path, monkeypatch):
    commands, seen = cli.commands(), []
    assert commands["bench"].config is BenchConfig and commands["bench"].run.__name__ == "run_bench"
    monkeypatch.setattr(cli, "commands", lambda: {**commands, "bench": commands["bench"]._replace(run=seen.append)})
    cli.main(["bench", "--quick", "--out", str(tmp_path), "--test_records", "7", "--plphp_r", "0.3"])
    (config,) = seen
    assert config.quick is True and config.out == str(tmp_path) and config.test_records == 7
    assert config.base is None and config.plphp_rows().r == 0.3


def test_unknown_command_is_an_error(capsys):
    assert "invalid choice: 'prune-everything'" in error_line(capsys, lambda: cli.main(["prune-everything"]))


@pytest.mark.parametrize("argv, message", [
    (["--out", "one", "two"], "argument --out: takes one value; 'two' is one too many"),
    (["--batch_size", "eight"], "argument --batch_size/--batch-size: invalid int value: 'eight'"),
    (["--plphp_queries", "first"], "argument --plphp_queries/--plphp-queries: invalid choice: 'first'"),
    (["--quick", "maybe"], "argument --quick: Truthy value expected"),
    (["--test_record", "7"], "unknown key(s) 'test_record' (did you mean 'test_records'?)"),
    (["--batch_size", "0"], "batch_size=0 must be >= 1"),
])
def test_a_bad_bench_command_line_is_one_line_naming_the_option(capsys, argv, message):
    line = error_line(capsys, lambda: cli.main(["bench", *argv]))
    assert line.startswith("lvprune bench: error: ") and message in line, line


def test_help_shows_types_choices_and_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["bench", "--help"])
    assert done.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "--out STR" in text and "[--out" not in text  # a scalar takes one value
    assert "--batch_size INT, --batch-size INT" in text and "(default: 32)" in text
    assert "--kvpress STR [STR ...]" in text  # several words only for a list
    assert "--plphp_queries {last,all,expected}" in text and "--quick [BOOL]" in text
    assert "--config FILE" in text


def test_an_optional_field_takes_null_and_a_yaml_file_sits_under_the_command_line(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("out: from-yaml\nbatch_size: 4\nplphp_r: 0.3\n")
    config = parse(BenchConfig, ["--config", str(path), "--batch_size", "8", "--plphp_r", "null"])
    assert (config.out, config.batch_size, config.plphp_r) == ("from-yaml", 8, None)


def test_every_entry_point_parses_with_the_same_rules(capsys):
    parser = build_parser(MakeShapesConfig, prog="make_shapes")
    assert parse(MakeShapesConfig, ["--types", "color", "count"], parser=parser).types == ["color", "count"]
    line = error_line(capsys, lambda: parse(MakeShapesConfig, ["--out", "a", "b"], parser=parser))
    assert line == "make_shapes: error: argument --out: takes one value; 'b' is one too many (a list is given " \
                   "to list options only)."
