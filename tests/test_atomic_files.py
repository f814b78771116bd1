"""`lvprune.utils.atomic_files`: a folder appears whole or not at all; a text file is replaced in one step."""

import pytest

from lvprune.utils.atomic_files import replace_text, write_folder


def test_a_failed_write_leaves_no_folder_and_no_staging(tmp_path):
    def write(folder):
        (folder / "half.bin").write_bytes(b"\0")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_folder(tmp_path / "out", write)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_completed_meanwhile_is_kept_and_an_empty_one_replaced(tmp_path):
    def theirs_first(folder):
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "theirs").write_text("done")  # another process finished first
        (folder / "ours").write_text("done")

    assert write_folder(tmp_path / "out", theirs_first) == tmp_path / "out"
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in (tmp_path / "out").iterdir()] == ["theirs"]
    (tmp_path / "empty").mkdir()
    write_folder(tmp_path / "empty", lambda folder: (folder / "ours").write_text("done"))
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["ours"]


def test_replace_text_swaps_the_whole_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")
    replace_text(path, "new\n")
    assert path.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
