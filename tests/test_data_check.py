"""The data check is paid once per version of the data: a second load reuses it (same records, same counts, the
skipped records named again), an edited file or other options are checked again, and a pool of processes decides
what one process decides."""

import json
import logging
import os

import pytest
from test_data_llava_format import BAD, GOOD, folder  # noqa: F401  (the module-scoped image folder)

from lvprune.data import llava_format
from lvprune.data.llava_format import load_llava_dataset
from lvprune_shapes.processor import build_processor


@pytest.fixture(scope="module")
def processor():
    return build_processor()


@pytest.fixture()
def counted(monkeypatch):
    """How many records the check looked at (in this process: num_proc=1 checks without a pool)."""
    seen = []
    check = llava_format.check_batch

    def counting(batch, **kwargs):
        seen.append(len(batch["id"]))
        return check(batch, **kwargs)

    monkeypatch.setattr(llava_format, "check_batch", counting)
    return seen


def load(folder, processor, cache, lines, **kwargs):
    return load_llava_dataset(folder / "train.json", folder, processor, cache_dir=cache, log=lines.append,
                              num_proc=1, **kwargs)


def rows(dataset) -> list[list]:
    return [example["input_ids"].tolist() for example in dataset]


def test_a_second_load_reuses_the_check_and_names_the_skipped_records_again(folder, processor, tmp_path, counted,
                                                                           caplog):
    first_lines, second_lines = [], []
    with caplog.at_level(logging.WARNING, logger="lvprune.data.records"):
        first, first_stats = load(folder, processor, tmp_path, first_lines)
        named_first = sorted(caplog.messages)
        caplog.clear()
        checked = sum(counted)
        second, second_stats = load(folder, processor, tmp_path, second_lines)
        named_second = sorted(caplog.messages)
    assert checked == len(GOOD) + len(BAD) and sum(counted) == checked, "the second load checked records again"
    assert "checking the records" in first_lines[0] and "reusing the check" in second_lines[0]
    assert rows(second) == rows(first) and len(second) == len(GOOD)
    assert second_stats == first_stats and second_stats.summary() == first_stats.summary()
    assert named_second == named_first and any("skipping record missing: missing_image_file" in m for m in named_first)


def test_an_edited_file_or_other_options_are_checked_again(folder, processor, tmp_path, counted):
    edited = tmp_path / "data"
    edited.mkdir()
    for name in os.listdir(folder):
        os.symlink(folder / name, edited / name)
    (edited / "train.json").unlink()
    (edited / "train.json").write_text(json.dumps(GOOD[:2]))
    lines = []
    assert len(load(edited, processor, tmp_path / "cache", lines)[0]) == 2
    (edited / "train.json").write_text(json.dumps(GOOD[:3]))
    assert len(load(edited, processor, tmp_path / "cache", lines)[0]) == 3
    assert len(load(edited, processor, tmp_path / "cache", lines, max_length=10_000)[0]) == 3
    assert [line.split(":")[1].split()[0] for line in lines if not line.startswith("data: checked")] == [
        "checking", "checking", "checking"]
    assert sum(counted) == 2 + 3 + 3


def test_a_pool_of_processes_keeps_what_one_process_keeps(folder, processor, tmp_path):
    one, one_stats = load_llava_dataset(folder / "train.json", folder, processor, cache_dir=tmp_path / "a",
                                        num_proc=1, log=lambda _: None)
    two, two_stats = load_llava_dataset(folder / "train.json", folder, processor, cache_dir=tmp_path / "b",
                                        num_proc=2, log=lambda _: None)
    assert rows(two) == rows(one) and two_stats == one_stats
