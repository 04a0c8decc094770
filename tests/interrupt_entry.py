"""`python tests/interrupt_entry.py OUT [tailor run options]`: `tailor run` whose stages are stand-ins,
the second of which runs two jobs in worker processes (edge_tailor.parallel.run_jobs) that wait.

Each job touches `OUT/started-<key>` once its worker runs it, so tests/test_interrupts.py can send a
signal mid-stage with the pool alive; with INTERRUPT_JOB_SECONDS=0 (a rerun) the jobs return at once.
"""

import dataclasses
import os
import sys
import time
import types
from pathlib import Path

import edge_tailor.pipeline as pipeline
from edge_tailor.cli import main
from edge_tailor.parallel import run_jobs


def wait_job(folder: str, key: int) -> int:
    Path(folder, f"started-{key}").touch()
    time.sleep(float(os.environ.get("INTERRUPT_JOB_SECONDS", "120")))
    return key


def _stage(name: str, pooled: bool) -> types.ModuleType:
    module = types.ModuleType(f"interrupt_fake.{name}")

    def run(cfg, run_dir):
        (run_dir.stage_dir(name) / "out.txt").write_text(name)
        if pooled:
            done = run_jobs(wait_job, {k: (os.environ["INTERRUPT_MARKS"], k) for k in range(2)}, 2, name)
            return {"metrics": {"jobs": sorted(done)}}
        return {"metrics": {}}

    module.run = run
    return module


if __name__ == "__main__":
    import interrupt_entry  # wait_job by its module's name, which the spawned workers can import

    stages = pipeline.STAGES[:2]
    pipeline.STAGES = tuple(dataclasses.replace(st, module_name=f"interrupt_fake.{st.name}") for st in stages)
    for i, st in enumerate(stages):
        sys.modules[f"interrupt_fake.{st.name}"] = interrupt_entry._stage(st.name, pooled=i == 1)
    sys.exit(main(["run", *sys.argv[1:]]))
