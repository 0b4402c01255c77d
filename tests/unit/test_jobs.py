"""The resumable per-process job helper (``safeclip.jobs``): torn lines, resume on another process count, merge.

Two real processes are in tests/integration/test_jobs_multiprocess.py.
"""

import json

import pytest

from safeclip.jobs import PartsJob


def _job(folder, rank=0, world_size=1):
    return PartsJob(folder, "part-{rank}.jsonl", key=lambda r: r["id"], rank=rank, world_size=world_size)


def test_torn_last_line_is_cut_and_its_item_redone(tmp_path):
    job = _job(tmp_path)
    with job.appender() as append:
        append([{"id": "a"}, {"id": "b"}])
    with open(job.path, "a") as handle:  # killed while writing c's line
        handle.write('{"id": "c", "val')
    assert job.finished() == {"a", "b"}  # readers skip the torn line
    assert job.todo(["a", "b", "c", "d"], key=str) == ["c", "d"]
    with job.appender() as append:
        append([{"id": "c"}, {"id": "d"}])
    lines = job.path.read_text().splitlines()
    assert lines == ['{"id": "a"}', '{"id": "b"}', '{"id": "c"}', '{"id": "d"}']  # torn bytes gone, no glued line


def test_todo_shards_and_resumes_on_another_process_count(tmp_path):
    items = [f"r{i}" for i in range(7)]
    first, second = _job(tmp_path, 0, 2), _job(tmp_path, 1, 2)
    assert first.todo(items, key=str) == ["r0", "r2", "r4", "r6"]
    assert second.todo(items, key=str) == ["r1", "r3", "r5"]
    with second.appender() as append:
        append([{"id": "r1"}, {"id": "r3"}])
    (tmp_path / "part-1.jsonl").open("a").write('{"id": "r5"')  # rank 1 of 2 died mid-line
    single = _job(tmp_path, 0, 1)  # resumed on one process: everything not recorded by any rank
    assert single.todo(items, key=str) == ["r0", "r2", "r4", "r5", "r6"]
    with single.appender() as append:
        append([{"id": i} for i in single.todo(items, key=str)])
    merged = single.merge(items[::-1], tmp_path / "merged.jsonl")
    assert [json.loads(x)["id"] for x in merged.read_text().splitlines()] == items[::-1]


def test_clear_errors(tmp_path):
    job = _job(tmp_path)
    with pytest.raises(ValueError, match="unique"):
        job.todo(["a", "a"], key=str)
    with pytest.raises(ValueError, match=r"2 captions not finished yet \(e.g. \['x', 'y'\]\); rerun generate"):
        job.ordered(["x", "y"], what="captions", rerun="rerun generate")
    with pytest.raises(ValueError, match="rank"):
        _job(tmp_path, 2, 2)
    with pytest.raises(ValueError, match=r"\{rank\}"):
        PartsJob(tmp_path, "part.jsonl", key=str, rank=0, world_size=1)
