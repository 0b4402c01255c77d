"""The one JSONL reader: strict by default (the error names file and line), tolerant of torn lines on request."""

import pytest

from safeclip.data.quadruplets import read_rows
from safeclip.errors import DataError
from safeclip.jsonl import read_jsonl, read_records


def test_strict_reading_names_the_bad_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b"\n')
    with pytest.raises(DataError, match=r"rows.jsonl line 4 is not valid JSON"):
        read_jsonl(path)
    with pytest.raises(DataError, match="line 4"):
        read_rows(path)
    assert read_jsonl(path, skip_bad_lines=True) == [{"a": 1}, {"a": 2}]


def test_records_of_several_parts_skip_a_torn_last_line(tmp_path):
    (tmp_path / "part-0.jsonl").write_text('{"id": "x"}\n{"id": "y", "te')
    (tmp_path / "part-1.jsonl").write_text('{"id": "z"}\n')
    assert [r["id"] for r in read_records(sorted(tmp_path.glob("part-*.jsonl")))] == ["x", "z"]


def test_the_reader_refuses_duplicate_keys_and_names_a_non_utf8_byte(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1, "a": 2}\n')
    with pytest.raises(DataError, match="key 'a' appears twice"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match="line 2 .*not UTF-8"):
        read_jsonl(path)


@pytest.mark.parametrize("first", ["safeclip.jobs", "safeclip.checkpoint", "safeclip.jsonl"])
def test_the_file_modules_import_in_any_order(first):
    """jobs.py uses checkpoint.py's atomic writes and both use jsonl.py: no module imports one that imports it."""
    import subprocess
    import sys

    code = f"import {first}, safeclip.jobs, safeclip.checkpoint"
    subprocess.run([sys.executable, "-c", code], check=True)
