"""Entry point for `accelerate launch --multi_gpu --num_processes 2 tests/accelerate_entry.py {dpo,sft} OUT`.

Runs the toolkit's own DPO (align) and SFT (distill) code unchanged on the embedded models.
"""

import json
import sys
from pathlib import Path

import torch

from edge_tailor.config import RunConfig
from edge_tailor.dpo import train_dpo
from edge_tailor.models import load_model
from edge_tailor.sft import train_student
from edge_tailor.toyworld.problems import make_splits
from edge_tailor.toyworld.styles import render_rationale
from edge_tailor.toyworld.task import toy_task

torch.set_num_threads(1)
mode, out = sys.argv[1], Path(sys.argv[2])
task = toy_task()
cfg = RunConfig.model_validate({"device": "cpu", "align": {"max_steps": 2, "batch_size": 2},
                                "distill": {"max_steps": 2, "batch_size": 4}})
if mode == "dpo":
    import random

    rng = random.Random(0)
    problems = make_splits(0, {"seed": 16})["seed"]
    pairs = [{"prompt": task.prompt(p.question), "chosen": " " + render_rationale(p, "step", rng),
              "rejected": " " + render_rationale(p, "terse", rng)} for p in problems]
    trainer, history = train_dpo(cfg, pairs, out)
    result = {"steps": trainer.state.global_step}
else:
    student = load_model(cfg.student, "cpu")
    rows = [{"prompt": task.prompt(e.question), "completion": " " + e.rationale} for e in task.preference[:16]]
    _, record = train_student(student.model, student.tokenizer, rows, cfg.distill, seed=0, device="cpu",
                              workdir=out / "sft")
    result = {"steps": record["steps"]}
from accelerate import PartialState  # noqa: E402

state = PartialState(cpu=True)  # the state the trainers (use_cpu=True) set up
result["world_size"] = state.num_processes
if state.is_main_process:
    (out / f"{mode}.json").write_text(json.dumps(result))
state.wait_for_everyone()
if torch.distributed.is_initialized():
    # gloo's threads must be joined before exit, or a rank can abort ("terminate called") at teardown
    torch.distributed.destroy_process_group()
