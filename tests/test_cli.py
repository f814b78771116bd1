"""The `lvprune` console script dispatches to its subcommands."""

import pytest

from lvprune.bench.cli import run_bench
from lvprune.cli import build_parser


def test_bench_is_wired_into_the_console_script(tmp_path):
    from lvprune.bench import BenchConfig
    from lvprune.settings import from_args

    args = build_parser().parse_args(["bench", "--quick", "--out", str(tmp_path), "--test_records", "7"])
    config = from_args(BenchConfig, args)
    assert args.func is run_bench and config.quick is True and config.out == str(tmp_path)
    assert config.test_records == 7 and config.base is None


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["prune-everything"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
