"""Two ``torchrun`` processes (gloo, CPU) share a resumable job: a killed process resumes without duplicates.

    pytest tests/integration/test_jobs_multiprocess.py        # ~30 s on 2 cores
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def launch(out: Path, n: int, run: int, *die: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "tests.integration.jobs_worker", str(out),
               str(n), str(run), *map(str, die)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def part_lines(out: Path, rank: int) -> list[str]:
    return (out / f"part-{rank}.jsonl").read_text().splitlines()


def test_killed_process_resumes_without_duplicates_or_losses(tmp_path):
    out = tmp_path / "job"
    killed = launch(out, 12, 1, 1, 2)  # rank 1 dies mid-line after 2 records
    assert killed.returncode != 0 and not (out / "merged.jsonl").exists()
    assert part_lines(out, 1)[-1] == '{"id": "i5", "ra'  # its torn last line
    finished = launch(out, 12, 2)
    assert finished.returncode == 0, finished.stderr[-3000:]
    merged = [json.loads(x) for x in (out / "merged.jsonl").read_text().splitlines()]
    assert [r["id"] for r in merged] == [f"i{k}" for k in range(12)]  # all, once, in item order
    assert all(r["rank"] == int(r["id"][1:]) % 2 for r in merged)  # each process did its own share
    assert [r["run"] for r in merged if r["rank"] == 1][:2] == [1, 1]  # recorded work was not redone
    for rank in (0, 1):  # every line complete: the torn one was cut before appending
        assert all(json.loads(line) for line in part_lines(out, rank))
    assert sum(len(part_lines(out, rank)) for rank in (0, 1)) == 12
