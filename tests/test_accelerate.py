"""The align (DPO) and distill (SFT) training code runs unchanged under `accelerate launch`."""

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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ENTRY), mode, str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / f"{mode}.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 2
    if mode == "dpo":
        assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
