"""Atomic folder writes: replace a folder (or a link to one) whole, or leave it as it was."""

import pytest

from safeclip.checkpoint import write_folder_atomic


def fill_with(text):
    def fill(tmp):
        (tmp / "a.txt").write_text(text)
    return fill


def test_replaces_a_folder_and_leaves_no_siblings(tmp_path):
    target = tmp_path / "base"
    write_folder_atomic(target, fill_with("one"))
    write_folder_atomic(target, fill_with("two"))
    assert (target / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_a_linked_folder_is_replaced_by_the_new_one_and_the_linked_one_is_kept(tmp_path):
    elsewhere = write_folder_atomic(tmp_path / "shared" / "base", fill_with("shared"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "base").symlink_to(elsewhere, target_is_directory=True)
    target = write_folder_atomic(tmp_path / "run" / "base", fill_with("new"))
    assert not target.is_symlink() and (target / "a.txt").read_text() == "new"
    assert (elsewhere / "a.txt").read_text() == "shared"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["base"]


def test_a_failed_fill_keeps_the_old_folder(tmp_path):
    target = write_folder_atomic(tmp_path / "base", fill_with("old"))

    def broken(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_folder_atomic(target, broken)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
