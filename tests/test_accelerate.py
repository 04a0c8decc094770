"""The align (DPO) and distill (SFT) training code runs unchanged under `accelerate launch`.

Two CPU processes: accelerate 1.15's `--cpu --num_processes 2` starts a single process unless MPI is
installed (checked here), so the torchrun-based launcher (`--multi_gpu`) starts the two processes and
the trainers, which run with use_cpu on a machine without CUDA, join a gloo (MULTI_CPU) group.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ENTRY = Path(__file__).with_name("accelerate_entry.py")


@pytest.mark.parametrize("mode", ["dpo", "sft"])
def test_two_cpu_processes(mode, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    accelerate = Path(sys.executable).with_name("accelerate")  # the console script of this environment
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ENTRY), mode, str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / f"{mode}.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 2
    if mode == "dpo":
        assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
