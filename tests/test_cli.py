"""The `lvprune` console script dispatches to its subcommands."""

import pytest

from lvprune.bench.cli import run_bench
from lvprune.cli import build_parser


def test_bench_is_wired_into_the_console_script(tmp_path):
    args = build_parser().parse_args(["bench", "--quick", "--out", str(tmp_path)])
    assert args.func is run_bench and args.quick and args.out == tmp_path


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["prune-everything"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
