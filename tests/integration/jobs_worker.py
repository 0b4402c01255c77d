"""A resumable job run by ``torchrun`` for tests/integration/test_jobs_multiprocess.py.

    torchrun --standalone --nproc_per_node 2 -m tests.integration.jobs_worker OUT N RUN [DIE_RANK DIE_AFTER]

Each process records its share of items ``0..N-1`` (``{"id", "rank", "run"}``), sleeping a little so that rank 0
reaches the barrier first; ``DIE_RANK`` writes half a line after ``DIE_AFTER`` records and exits as if killed.
After the barrier rank 0 merges every record in item order into ``OUT/merged.jsonl``.
"""

import os
import sys
import time

from safeclip.jobs import PartsJob


def main(out: str, n: str, run: str, die_rank: str = "-1", die_after: str = "0") -> None:
    job = PartsJob(out, "part-{rank}.jsonl", key=lambda r: r["id"])
    ids = [f"i{k}" for k in range(int(n))]
    todo = job.todo(ids, key=str)
    with job.appender() as append:
        for done, item in enumerate(todo):
            if job.rank == int(die_rank) and done == int(die_after):
                with open(job.path, "a") as handle:
                    handle.write('{"id": "' + item + '", "ra')
                os._exit(3)
            time.sleep(0.05 * job.rank)
            append([{"id": item, "rank": job.rank, "run": int(run)}])
    job.wait_for_everyone()
    if job.is_main:
        job.merge(ids, os.path.join(out, "merged.jsonl"))


if __name__ == "__main__":
    main(*sys.argv[1:])
