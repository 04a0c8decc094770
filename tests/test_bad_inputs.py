"""A catalogue of bad inputs: each gives its exit code, one line naming the file and the field or
line, and leaves nothing behind (no run directory, or an existing one byte-identical).

Exit codes: 2 bad input, 3 environment failure (disk full, read-only folder, lock held).
Stages are stand-ins here (tests of this file never load a model): a bad input that slipped past
the preflight would run one, and the test would see the call and the changed files.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

import edge_tailor.models as models
import edge_tailor.pipeline as pipeline
import edge_tailor.rundir as rundir
from edge_tailor.cli import main
from edge_tailor.models import resolve_model_path
from edge_tailor.target import target_path

CUDA = torch.cuda.is_available()
ROOT = os.geteuid() == 0
FIXTURES = Path(__file__).parent / "fixtures"
GSM8K = FIXTURES / "gsm8k" / "test_excerpt.jsonl"

# ---------------------------------------------------------------------------------------------
# Stand-in stages with the real names: they record their calls and write a file.

CALLS: list[str] = []
FAIL: dict[str, BaseException] = {}


def _fake_module(name: str) -> types.ModuleType:
    module = types.ModuleType(f"bad_inputs_fake.{name}")

    def run(cfg, run_dir):
        CALLS.append(name)
        (run_dir.stage_dir(name) / "out.txt").write_text(f"{name} {cfg.seed}")
        if name in FAIL:
            raise FAIL[name]
        return {"metrics": {"value": 1}}

    module.run = run
    return module


FAKE_STAGES = tuple(dataclasses.replace(st, module_name=f"bad_inputs_fake.{st.name}") for st in pipeline.STAGES)
for _st in FAKE_STAGES:
    sys.modules[_st.module_name] = _fake_module(_st.name)

HELD: list[int] = []  # lock descriptors the test process holds (closed after each test)


@pytest.fixture(autouse=True)
def _fake_stages(monkeypatch):
    monkeypatch.setattr(pipeline, "STAGES", FAKE_STAGES)
    CALLS.clear()
    FAIL.clear()
    yield
    while HELD:
        os.close(HELD.pop())


# ---------------------------------------------------------------------------------------------
# Helpers for building inputs.


@dataclass
class Ctx:
    tmp: Path

    @property
    def inp(self) -> Path:
        folder = self.tmp / "in"
        folder.mkdir(exist_ok=True)
        return folder

    @property
    def out(self) -> Path:
        return self.tmp / "runs"

    @property
    def run(self) -> Path:
        return self.out / "default"

    def file(self, name: str, text: str | bytes) -> str:
        path = self.inp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def finished(self) -> Path:
        """A finished run (stand-in stages) at runs/default."""
        assert main(["run", "--out", str(self.out)]) == 0
        CALLS.clear()
        return self.run

    def hold_lock(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        HELD.append(fd)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder under root."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _toml_value(v) -> str:
    return ("inf" if v > 0 else "-inf") if isinstance(v, float) and math.isinf(v) else json.dumps(v)


def _toml(data: dict, prefix: str = "") -> str:
    scalars = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    text = "".join(line + "\n" for line in scalars)
    for k, v in data.items():
        if isinstance(v, dict):
            text += f"\n[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.")
    return text


def _target(t: Ctx, mutate: Callable[[dict], None], name: str = "t") -> list[str]:
    data = tomllib.loads(target_path("ci-x86").read_text())
    data["target"]["name"] = name
    mutate(data)
    return ["--target", t.file(f"{name}.toml", _toml(data))]


def _set(path: str, value):
    def mutate(data: dict) -> None:
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return mutate


DELETE = object()


def _model(t: Ctx, name: str, *, weights: str | None = "safetensors", config: str | None = "copy",
           extra: dict | None = None) -> str:
    """A model folder made from the embedded student: its config.json (or ``config`` text), tokenizer
    files, and its weights as safetensors, as a fake pickle ('bin'), or none."""
    src = Path(resolve_model_path("embedded:student"))
    folder = t.inp / name
    folder.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, folder / f.name)
    if config == "copy":
        data = json.loads((src / "config.json").read_text())
        data.update(extra or {})
        (folder / "config.json").write_text(json.dumps(data, indent=2))
    elif config is not None:
        (folder / "config.json").write_text(config)
    if weights == "safetensors":
        for f in src.glob("*.safetensors"):
            shutil.copy(f, folder / f.name)
    elif weights == "bin":
        (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return str(folder)


def _run(t: Ctx, *argv: str) -> list[str]:
    return ["run", "--out", str(t.out), *argv]


def _gsm(t: Ctx, text: str, name: str = "gsm.jsonl") -> list[str]:
    return _run(t, "task.name=gsm8k", f"task.path={t.file(name, text)}")


def _bbh(t: Ctx, data, name: str = "bbh_task.json", cot: str | None = None) -> list[str]:
    text = data if isinstance(data, str) else json.dumps(data)
    argv = _run(t, "task.name=bbh", f"task.path={t.file(name, text)}")
    return argv + ([f"task.cot_prompt={cot}"] if cot else [])


def _mc(t: Ctx, text: str) -> list[str]:
    return _run(t, "task.name=multiple-choice", f"task.path={t.file('mc.jsonl', text)}")


def _truncate(path: Path) -> None:
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(_args[0]) if _args else None)


def _erofs_mkdir(self, *_args, **_kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))


def _eacces_mkdir(self, *_args, **_kwargs):
    raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(self))


NL = "\n"
GOOD_GSM = '{"question": "1+1?", "answer": "2 #### 2"}\n'
GSM_40 = "".join(json.dumps({"question": f"{i}+1?", "answer": f"{i + 1} #### {i + 1}"}) + NL for i in range(40))
BBH_OK = {"examples": [{"input": f"True and {b} is", "target": str(b)} for b in (True, False) * 4]}


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    code: int
    needles: tuple[str, ...]
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    marks: tuple = ()


C = Case


def Y(name: str, text: str, *needles: str) -> Case:  # noqa: N802 (reads as a table row, like C)
    """A bad run config: `tailor run --config c.yaml` with `text`; the message names c.yaml and `needles`."""
    return Case(name, lambda t: _run(t, "--config", t.file("c.yaml", text)), 2, ("c.yaml", *needles))


CASES = [
    # --- run configs: YAML / TOML syntax, types, unknown keys, ranges, names -------------------------
    Y("yaml-syntax", "seed: [1,\n", "line 2", "YAML"),
    Y("yaml-tab-indent", "teacher:\n\tpath: x\n", "line 2"),
    Y("yaml-bad-mapping", "seed: 1\n  threads: 2\nx: [\n", "line 2"),
    Y("yaml-top-level-list", "- seed\n", "top level"),
    Y("yaml-wrong-type", "seed: abc\n", "seed", "integer"),
    Y("yaml-wrong-type-nested", "distill:\n  max_steps: many\n", "distill.max_steps"),
    Y("yaml-section-not-mapping", "distill: 3\n", "distill"),
    Y("yaml-unknown-key", "sead: 1\n", "sead", "unknown key"),
    Y("yaml-unknown-nested-key", "distill:\n  lora:\n    rank: 4\n", "distill.lora.rank", "allowed: r, alpha"),
    Y("yaml-out-of-range", "elicit:\n  temperature: 0\n", "elicit.temperature"),
    Y("yaml-out-of-range-rounds", "align:\n  rounds: 9\n", "align.rounds"),
    Y("yaml-negative-threads", "threads: -1\n", "threads"),
    Y("yaml-bad-literal", "teacher:\n  dtype: float8\n", "teacher.dtype"),
    Y("yaml-unknown-task", "task:\n  name: mmlu\n", "task.name"),
    Y("yaml-task-without-path", "task:\n  name: gsm8k\n", "task.path", "needs a data file"),
    Y("name-traversal", "name: ../../x\n", "name", "not a run name"),
    Y("name-slash", "name: a/b\n", "name"),
    Y("name-absolute", "name: /tmp/x\n", "name"),
    Y("name-dot", "name: .hidden\n", "name"),
    Y("name-dotdot", "name: ..\n", "name"),
    Y("name-empty", "name: ''\n", "name"),
    Y("name-space", "name: my run\n", "name"),
    Y("yaml-duplicate-key", "seed: 1\nthreads: 1\nseed: 2\n", "line 3", "duplicate key 'seed' (first on line 1)"),
    Y("yaml-duplicate-nested-key", "distill:\n  max_steps: 3\n  max_steps: 4\n", "line 3", "duplicate key 'max_steps'"),
    Y("yaml-infinite-beta", "align:\n  beta: .inf\n", "align.beta", "finite"),
    Y("yaml-nan-learning-rate", "distill:\n  learning_rate: .nan\n", "distill.learning_rate"),
    Y("yaml-threads-huge", "threads: 100000\n", "threads", "1024"),
    C("json-config-duplicate-key", lambda t: _run(t, "--config", t.file("c.json", '{"seed": 1, "seed": 2}')), 2,
      ("c.json", "duplicate key 'seed'")),
    C("json-config-syntax", lambda t: _run(t, "--config", t.file("c.json", '{"seed": 1,\n')), 2,
      ("c.json", "line 2", "not valid JSON")),
    C("json-config-wrong-type", lambda t: _run(t, "--config", t.file("c.json", '{"distill": {"max_steps": "x"}}')), 2,
      ("c.json", "distill.max_steps")),
    C("toml-config-duplicate-key", lambda t: _run(t, "--config", t.file("c.toml", "seed = 1\nseed = 2\n")), 2,
      ("c.toml", "line 2")),
    C("toml-syntax", lambda t: _run(t, "--config", t.file("c.toml", "seed = = 1\n")), 2, ("c.toml", "line 1",
                                                                                           "TOML")),
    C("toml-syntax-line-3", lambda t: _run(t, "--config", t.file("c.toml", "seed = 1\n[distill]\nmax_steps = [\n")),
      2, ("c.toml", "line 3")),
    C("toml-wrong-type", lambda t: _run(t, "--config", t.file("c.toml", 'seed = "x"\n')), 2, ("c.toml", "seed")),
    C("toml-traversal-name", lambda t: _run(t, "--config", t.file("c.toml", 'name = "../up"\n')), 2,
      ("c.toml", "name")),
    C("config-missing", lambda t: _run(t, "--config", str(t.inp / "nope.yaml")), 2, ("nope.yaml", "cannot read")),
    C("config-is-a-folder", lambda t: _run(t, "--config", str(t.inp)), 2, ("in", "cannot read")),
    C("config-not-utf8", lambda t: _run(t, "--config", t.file("c.yaml", b"seed: \xff\xfe\n")), 2,
      ("c.yaml", "UTF-8")),
    C("config-device-cuda", lambda t: _run(t, "--config", t.file("c.yaml", "device: cuda\n")), 2,
      ("c.yaml", "device", "CUDA"), marks=(pytest.mark.skipif(CUDA, reason="a CUDA device is visible"),)),
    # --- dotted overrides: the error names the command line and the key --------------------------------
    C("override-unknown-section", lambda t: _run(t, "a.b.c=1"), 2, ("command line", "a.b.c", "unknown key 'a'")),
    C("override-section-value", lambda t: _run(t, "distill.lora=3"), 2, ("command line", "distill.lora")),
    C("override-unknown-leaf", lambda t: _run(t, "distill.lora.rank=3"), 2, ("command line", "distill.lora.rank")),
    C("override-wrong-type", lambda t: _run(t, "distill.lora.r=many"), 2, ("command line", "distill.lora.r")),
    C("override-wrong-type-in-file-section", lambda t: _run(t, "--config", t.file("c.yaml", "seed: 1\n"),
                                                            "elicit.temperature=hot"), 2,
      ("command line", "elicit.temperature")),
    C("override-out-of-range", lambda t: _run(t, "elicit.drafts=0"), 2, ("command line", "elicit.drafts")),
    C("override-no-equals", lambda t: _run(t, "novalue"), 2, ("command line", "novalue")),
    C("override-infinite-beta", lambda t: _run(t, "align.beta=inf"), 2, ("command line", "align.beta", "finite")),
    C("override-nan-temperature", lambda t: _run(t, "elicit.temperature=nan"), 2,
      ("command line", "elicit.temperature")),
    C("override-workers-huge", lambda t: _run(t, "workers=100000"), 2, ("command line", "workers")),
    C("override-reference-threads-huge", lambda t: _run(t, "bench.reference_threads=100000"), 2,
      ("command line", "bench.reference_threads")),
    C("override-unknown-technique", lambda t: _run(t, "elicit.techniques=[nope]"), 2,
      ("command line", "elicit.techniques", "'nope'", "step")),
    C("override-technique-twice", lambda t: _run(t, "elicit.techniques=[step, step]"), 2,
      ("command line", "elicit.techniques", "twice")),
    C("override-unknown-technique-on-finished-run",
      lambda t: [*(t.finished() and ()), *_run(t, "--only", "elicit", "elicit.techniques=[nope]")], 2,
      ("command line", "elicit.techniques", "unknown")),
    C("override-test-questions-beyond-split", lambda t: _run(t, "evaluate.test_questions=999999999"), 2,
      ("command line", "evaluate.test_questions", "1000 test questions")),
    C("toy-build-negative-scale", lambda t: ["toy", "build", "--out", str(t.tmp / "world"), "--scale", "-1"], 2,
      ("command line", "--scale", "fraction")),
    C("toy-build-nan-scale", lambda t: ["toy", "build", "--out", str(t.tmp / "world"), "--scale", "nan"], 2,
      ("command line", "--scale")),
    C("override-no-key", lambda t: _run(t, "=3"), 2, ("command line", "=3")),
    C("override-empty-part", lambda t: _run(t, "elicit..drafts=3"), 2, ("command line", "elicit..drafts")),
    C("override-into-scalar", lambda t: _run(t, "seed.x=1"), 2, ("command line", "seed.x", "not a section")),
    C("override-name-traversal", lambda t: _run(t, "name=../../x"), 2, ("command line", "name", "not a run name")),
    C("override-name-slash", lambda t: _run(t, "name=a/b"), 2, ("command line", "name")),
    C("override-device-cuda", lambda t: _run(t, "device=cuda"), 2, ("command line", "device", "CUDA"),
      marks=(pytest.mark.skipif(CUDA, reason="a CUDA device is visible"),)),
    C("override-unknown-device", lambda t: _run(t, "device=tpu"), 2, ("command line", "device")),
    C("override-unknown-target", lambda t: _run(t, "target=pdp-11"), 2, ("command line", "target", "unknown target")),
    C("option-only-unknown-stage", lambda t: _run(t, "--only", "nostage"), 2, ("command line", "--only nostage")),
    C("option-force-unknown-stage", lambda t: _run(t, "--force", "nostage"), 2, ("command line", "--force nostage")),
    C("option-only-needs-upstream", lambda t: _run(t, "--only", "prefer"), 2, ("elicit.json", "prefer", "elicit")),
    C("option-out-is-a-file", lambda t: ["run", "--out", t.file("outfile", "x")], 2, ("outfile", "--out")),
    C("run-dir-is-a-file", lambda t: ["run", "--out", str(Path(t.file("o/default", "x")).parent)], 2,
      ("default", "not a run directory")),
    # --- device targets ----------------------------------------------------------------------------------
    C("target-unknown-name", lambda t: _run(t, "--target", "pdp-11"), 2, ("pdp-11", "target", "unknown target")),
    C("target-missing-file", lambda t: _run(t, "--target", str(t.inp / "nope.toml")), 2,
      ("nope.toml", "no such target file")),
    C("target-toml-syntax", lambda t: _run(t, "--target", t.file("t.toml", "[target]\nname = = 'x'\n")), 2,
      ("t.toml", "line 2")),
    C("target-not-utf8", lambda t: _run(t, "--target", t.file("t.toml", b"[target]\nname = '\xff'\n")), 2,
      ("t.toml", "UTF-8")),
    C("target-missing-field", lambda t: _run(t, *_target(t, _set("runtime.intra_op_threads", DELETE))), 2,
      ("t.toml", "runtime.intra_op_threads", "missing")),
    C("target-missing-section", lambda t: _run(t, *_target(t, _set("bench", DELETE))), 2, ("t.toml", "bench")),
    C("target-wrong-type", lambda t: _run(t, *_target(t, _set("runtime.intra_op_threads", "two"))), 2,
      ("t.toml", "runtime.intra_op_threads")),
    C("target-bool-as-int", lambda t: _run(t, *_target(t, _set("runtime.allow_spinning", 1))), 2,
      ("t.toml", "runtime.allow_spinning")),
    C("target-unknown-field", lambda t: _run(t, *_target(t, _set("target.colour", "red"))), 2,
      ("t.toml", "target.colour", "unknown field")),
    C("target-bad-engine", lambda t: _run(t, *_target(t, _set("runtime.engine", "tensorrt"))), 2,
      ("t.toml", "runtime.engine")),
    C("target-intra-op-threads-huge", lambda t: _run(t, *_target(t, _set("runtime.intra_op_threads", 100000)))
      , 2, ("t.toml", "runtime.intra_op_threads", "1024")),
    C("target-budget-infinite", lambda t: _run(t, *_target(t, _set("budgets.model_mb", math.inf))), 2,
      ("t.toml", "budgets.model_mb", "finite")),
    C("target-relative-budget-infinite",
      lambda t: _run(t, *_target(t, _set("budgets.relative.ms_per_token_vs_torch_fp32", math.inf))), 2,
      ("t.toml", "budgets.relative.ms_per_token_vs_torch_fp32")),
    C("target-zero-repeats", lambda t: _run(t, *_target(t, _set("bench.repeats", 0))), 2, ("t.toml", "bench.repeats")),
    C("target-int4-without-blocks", lambda t: _run(t, *_target(t, _set("quant.weights.dtype", "int4"))), 2,
      ("t.toml", "quant", "int4")),
    C("target-group-size-per-channel", lambda t: _run(t, *_target(t, _set("quant.weights.group_size", 32))), 2,
      ("t.toml", "quant.weights.group_size", "per_group")),
    C("target-static-without-calibration", lambda t: _run(t, *_target(t, _set("quant.activations.mode", "static"))),
      2, ("t.toml", "quant.activations")),
    C("target-dynamic-symmetric", lambda t: _run(t, *_target(t, _set("quant.activations.symmetric", True))), 2,
      ("t.toml", "quant.activations", "symmetric")),
    C("target-block-size-not-power-of-two",
      lambda t: _run(t, *_target(t, _set("quant.weight_only_blocks", {"enabled": False, "bits": 8, "block_size": 48,
                                                                       "accuracy_level": 0}))), 2,
      ("t.toml", "quant.weight_only_blocks.block_size", "power of two")),
    C("target-no-budgets", lambda t: _run(t, *_target(t, lambda d: d.__setitem__("budgets", {}))), 2,
      ("t.toml", "budgets")),
    C("target-accuracy-drop-above-one", lambda t: _run(t, *_target(t, _set("budgets.max_accuracy_drop", 2.0))), 2,
      ("t.toml", "budgets.max_accuracy_drop")),
    # --- task files -------------------------------------------------------------------------------------
    C("gsm8k-missing-file", lambda t: _run(t, "task.name=gsm8k", f"task.path={t.inp / 'missing.jsonl'}"), 2,
      ("missing.jsonl", "file not found")),
    C("gsm8k-bad-json-line", lambda t: _gsm(t, GOOD_GSM + '{"question": "x", \n'), 2,
      ("gsm.jsonl", "line 2", "invalid JSON")),
    C("gsm8k-line-not-object", lambda t: _gsm(t, '["question", "answer"]\n'), 2, ("gsm.jsonl", "line 1",
                                                                                     "JSON object")),
    C("gsm8k-missing-answer", lambda t: _gsm(t, '{"question": "1+1?"}\n'), 2, ("gsm.jsonl", "line 1: answer",
                                                                               "missing")),
    C("gsm8k-question-not-string", lambda t: _gsm(t, '{"question": 3, "answer": "#### 3"}\n'), 2,
      ("gsm.jsonl", "line 1: question")),
    C("gsm8k-no-final-marker", lambda t: _gsm(t, GOOD_GSM + '{"question": "x", "answer": "no marker"}\n'), 2,
      ("gsm.jsonl", "line 2", "answer")),
    C("gsm8k-empty-file", lambda t: _gsm(t, "\n\n"), 2, ("gsm.jsonl", "no records")),
    C("gsm8k-too-few-records", lambda t: _gsm(t, GOOD_GSM), 2, ("gsm.jsonl", "n_seed")),
    C("gsm8k-test-questions-beyond-split", lambda t: _gsm(t, GSM_40) + ["evaluate.test_questions=500"], 2,
      ("command line", "evaluate.test_questions", "test questions of task 'gsm8k'")),
    C("gsm8k-not-utf8", lambda t: _gsm(t, b'{"question": "\xff"}\n'), 2, ("gsm.jsonl", "cannot read")),
    C("bbh-bad-json", lambda t: _bbh(t, '{"examples": [\n  {"input": "x",\n'), 2, ("bbh_task.json", "line")),
    C("bbh-no-examples", lambda t: _bbh(t, {"canary": "x"}), 2, ("bbh_task.json", "examples", "missing")),
    C("bbh-empty-examples", lambda t: _bbh(t, {"examples": []}), 2, ("bbh_task.json", "examples", "empty")),
    C("bbh-missing-target", lambda t: _bbh(t, {"examples": [{"input": "x"}]}), 2,
      ("bbh_task.json", "examples[0].target", "missing")),
    C("bbh-example-not-object", lambda t: _bbh(t, {"examples": ["x"]}), 2, ("bbh_task.json", "examples[0]")),
    C("bbh-cot-prompt-missing", lambda t: _bbh(t, BBH_OK, cot=str(t.inp / "nope.txt")), 2,
      ("nope.txt", "file not found")),
    C("bbh-cot-prompt-no-demos", lambda t: _bbh(t, BBH_OK, cot=t.file("cot.txt", "Task description: x\n")), 2,
      ("cot.txt", "demonstrations")),
    C("bbh-cot-prompt-no-answer", lambda t: _bbh(t, BBH_OK, cot=t.file("cot.txt", "x\n\nQ: a?\nA: dunno\n")), 2,
      ("cot.txt", "demo 1", "answer is")),
    C("mc-options-not-list", lambda t: _mc(t, '{"question": "q", "options": "A or B", "answer": "A"}\n'), 2,
      ("mc.jsonl", "line 1: options")),
    C("mc-answer-out-of-range", lambda t: _mc(t, '{"question": "q", "options": ["a", "b"], "answer": 5}\n'), 2,
      ("mc.jsonl", "line 1: answer")),
    C("cot-prompt-for-gsm8k", lambda t: _gsm(t, GOOD_GSM * 5) + [f"task.cot_prompt={t.file('cot.txt', 'x')}"], 2,
      ("command line", "task.cot_prompt")),
    C("toy-arith-with-missing-path", lambda t: _run(t, f"task.path={t.inp / 'data.jsonl'}"), 2,
      ("data.jsonl", "task.path", "file not found")),
    C("toy-arith-with-a-path", lambda t: _run(t, f"task.path={t.file('data.jsonl', GOOD_GSM)}"), 2,
      ("command line", "task.path", "data.jsonl")),
    # --- TeacherLM annotation dataset -------------------------------------------------------------------
    C("annotate-missing-on-finished-run",
      lambda t: [*(t.finished() and ()), *_run(t, "--only", "elicit", f"elicit.annotate.path={t.inp / 'missing.jsonl'}")],
      2, ("missing.jsonl", "elicit.annotate.path", "file not found")),
    C("annotate-gsm8k-missing", lambda t: _run(t, "elicit.annotate.name=gsm8k",
                                               f"elicit.annotate.path={t.inp / 'missing.jsonl'}"), 2,
      ("missing.jsonl", "file not found")),
    C("annotate-gsm8k-bad-line",
      lambda t: _run(t, "elicit.annotate.name=gsm8k",
                     "elicit.annotate.path=" + t.file("ann.jsonl", GOOD_GSM + "{oops}" + NL)), 2,
      ("ann.jsonl", "line 2")),
    C("annotate-without-path", lambda t: _run(t, "elicit.annotate.name=gsm8k"), 2,
      ("command line", "elicit.annotate.path")),
    C("annotate-bad-order", lambda t: _run(t, "elicit.annotate.name=toy-arith", "elicit.annotate_order=XYZ"), 2,
      ("command line", "elicit.annotate_order")),
    C("model-results-missing", lambda t: _run(t, f"prefer.model_results={t.inp / 'irt.json'}"), 2,
      ("irt.json", "prefer.model_results")),
    # --- model folders ----------------------------------------------------------------------------------
    C("model-folder-missing", lambda t: _run(t, f"student.path={t.inp / 'nope'}"), 2,
      ("nope", "does not exist", "student.path")),
    C("model-folder-missing-relative", lambda t: _run(t, "teacher.path=./no/such/model"), 2,
      ("no/such/model", "does not exist", "teacher.path")),
    C("model-folder-is-a-file", lambda t: _run(t, f"student.path={t.file('weights.bin', 'x')}"), 2,
      ("weights.bin", "not a folder")),
    C("model-no-config-json", lambda t: _run(t, f"student.path={_model(t, 'm', config=None)}"), 2,
      ("config.json", "missing", "student.path")),
    C("model-invalid-config-json", lambda t: _run(t, "student.path=" + _model(t, "m", config='{"a": 1,\n oops}')),
      2, ("config.json", "line 2", "not valid JSON")),
    C("model-config-json-not-object", lambda t: _run(t, f"student.path={_model(t, 'm', config='[1, 2]')}"), 2,
      ("config.json", "JSON object")),
    C("model-pickle-only", lambda t: _run(t, f"student.path={_model(t, 'm', weights='bin')}"), 2,
      ("weights", "only pickled", "student.path")),
    C("model-no-weights", lambda t: _run(t, f"student.path={_model(t, 'm', weights=None)}"), 2,
      ("weights", "no weights", "student.path")),
    C("model-auto-map-student", lambda t: _run(t, f"student.path={_model(t, 'm', extra={'auto_map': {'AutoModelForCausalLM': 'x.Y'}})}"),
      2, ("config.json", "auto_map", "trust_remote_code")),
    C("model-auto-map-teacher", lambda t: _run(t, f"teacher.path={_model(t, 'm', extra={'auto_map': {'AutoConfig': 'x.C'}})}"),
      2, ("config.json", "auto_map", "teacher.path")),
    C("model-unknown-embedded", lambda t: _run(t, "student.path=embedded:giant"), 2,
      ("command line", "student.path", "unknown embedded")),
    C("model-hub-id-not-cached", lambda t: _run(t, "student.path=nobody/not-a-model"), 2,
      ("nobody/not-a-model", "cache", "student.path")),
    C("model-hub-id-cached-with-auto-map", lambda t: [
        *_run(t, "teacher.path=somebody/remote-code"),
        t.file("hub/config.json", json.dumps({"model_type": "llama", "auto_map": {"AutoConfig": "a.B"}}))][:-1],
      2, ("config.json", "auto_map", "teacher.path"),
      patch=lambda mp: mp.setattr(models, "_cached", lambda repo, f: str(Path(os.environ["BAD_INPUTS_TMP"]) / "in" /
                                                                         "hub" / "config.json"))),
    C("model-pickle-only-via-config-file",
      lambda t: _run(t, "--config", t.file("c.yaml", f"student:\n  path: {_model(t, 'm', weights='bin')}\n")), 2,
      ("only pickled", "student.path", "c.yaml")),
    # --- run directories --------------------------------------------------------------------------------
    C("status-missing-run", lambda t: ["status", str(t.inp / "nope")], 2, ("manifest.json", "not a run directory")),
    C("status-truncated-manifest", lambda t: [_truncate(t.finished() / "manifest.json"), "status", str(t.run)][1:], 2,
      ("manifest.json", "line", "not valid JSON")),
    C("status-manifest-not-object", lambda t: [(t.finished() / "manifest.json").write_text("[]"),
                                               "status", str(t.run)][1:], 2, ("manifest.json", "JSON object")),
    C("status-truncated-record", lambda t: [_truncate(t.finished() / "records" / "elicit.json"),
                                            "status", str(t.run)][1:], 2, ("elicit.json", "line")),
    C("run-on-truncated-manifest", lambda t: [_truncate(t.finished() / "manifest.json"), *_run(t, "--force", "elicit")][1:],
      2, ("manifest.json", "line")),
    C("run-on-truncated-record", lambda t: [_truncate(t.finished() / "records" / "prefer.json"), *_run(t)][1:], 2,
      ("prefer.json", "line")),
    C("stage-on-non-run-folder", lambda t: ["elicit", "--run", str(t.inp)], 2, ("config.yaml", "not a run directory")),
    C("stage-on-missing-folder", lambda t: ["distill", "--run", str(t.inp / "nope")], 2,
      ("config.yaml", "not a run directory")),
    C("bench-stage-on-non-run-folder", lambda t: ["bench", "--run", str(t.inp)], 2, ("config.yaml", "run directory")),
    C("stage-with-broken-config-yaml", lambda t: [(t.finished() / "config.yaml").write_text("seed: [\n"),
                                                  "elicit", "--run", str(t.run)][1:], 2, ("config.yaml", "line 2")),
    C("stage-with-bad-value-in-config-yaml", lambda t: [(t.finished() / "config.yaml").write_text("name: ../x\n"),
                                                        "elicit", "--run", str(t.run)][1:], 2, ("config.yaml", "name")),
    C("stage-missing-upstream", lambda t: [(t.finished() / "records" / "elicit.json").unlink(),
                                           "prefer", "--run", str(t.run)][1:], 2, ("elicit.json", "prefer")),
    C("stage-on-truncated-record", lambda t: [_truncate(t.finished() / "records" / "elicit.json"),
                                              "prefer", "--run", str(t.run)][1:], 2, ("elicit.json", "line")),
    # --- environment: full or read-only disk, lock held (exit 3) ----------------------------------------
    C("enospc-manifest-new-run", lambda t: _run(t), 3, ("manifest.json", "No space left on device"),
      patch=lambda mp: mp.setattr(rundir, "write_json_atomic", _enospc)),
    C("enospc-config-new-run", lambda t: _run(t), 3, ("config.yaml", "No space left on device"),
      patch=lambda mp: mp.setattr(rundir, "write_text_atomic", _enospc)),
    C("enospc-finished-run", lambda t: [t.finished(), *_run(t, "--force", "elicit", "seed=5")][1:], 3,
      ("manifest.json", "No space left on device"), patch=lambda mp: mp.setattr(rundir, "write_json_atomic", _enospc)),
    C("erofs-out-folder", lambda t: _run(t), 3, ("runs", "Read-only file system"),
      patch=lambda mp: mp.setattr(Path, "mkdir", _erofs_mkdir)),
    C("eacces-out-folder", lambda t: _run(t), 3, ("runs", "Permission denied"),
      patch=lambda mp: mp.setattr(Path, "mkdir", _eacces_mkdir)),
    C("chmod-read-only-out", lambda t: [os.chmod(t.inp, 0o555), "run", "--out", str(t.inp / "runs")][1:], 3,
      ("runs", "Permission denied"), marks=(pytest.mark.skipif(ROOT, reason="root writes through chmod 0o555"),)),
    C("lock-held-new-folder", lambda t: [t.hold_lock(t.run), *_run(t)][1:], 3,
      (".lock", "another tailor process (pid {pid})")),
    C("lock-held-finished-run", lambda t: [t.hold_lock(t.finished()), *_run(t, "--force", "elicit")][1:], 3,
      (".lock", "another tailor process (pid {pid})")),
    C("lock-held-stage-command", lambda t: [t.hold_lock(t.finished()), "elicit", "--run", str(t.run), "--force"][1:],
      3, (".lock", "pid {pid}")),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BAD_INPUTS_TMP", str(tmp_path))
    t = Ctx(tmp_path)
    argv = case.argv(t)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    if case.patch:
        case.patch(monkeypatch)
    try:
        code = main(argv)
    finally:
        monkeypatch.undo()  # Path.mkdir and the write helpers back before looking at the folder
        monkeypatch.setattr(pipeline, "STAGES", FAKE_STAGES)
        if (tmp_path / "in").exists():
            os.chmod(tmp_path / "in", 0o755)
    # the one informational line about the host's INT8 kernel (edge_tailor.hostcpu) is not part of the error
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not line.startswith(("INT8 kernel: ", "WARNING: INT8 kernel differs")))
    assert code == case.code, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in case.needles:
        assert needle.format(pid=os.getpid()) in err, f"{needle!r} not in {err!r}"
    assert "Traceback" not in err
    assert CALLS == [], "a stage ran despite the bad input"
    assert _snapshot(tmp_path) == before, "bad input left files behind or changed a run directory"


def test_catalogue_size():
    by_code: dict[int, int] = {}
    for case in CASES:
        by_code[case.code] = by_code.get(case.code, 0) + 1
    # issue #31 grew it by 23 (duplicate keys, infinite numbers, thread counts, techniques and test questions
    # against the task, JSON configs, toy build --scale): a case removed must be a case replaced
    assert len(CASES) >= 155 and by_code[2] >= 146 and by_code[3] >= 9, by_code


# ---------------------------------------------------------------------------------------------
# Failures once stages run: nothing half-written stays, the manifest says what failed.


@pytest.mark.parametrize("exc, code, status, line", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/elicit/drafts.jsonl"), 3, "failed",
     "error: /x/elicit/drafts.jsonl: No space left on device (in stage 'elicit', whose output was removed"),
    (KeyboardInterrupt("elicit interrupted"), 130, "interrupted", "interrupted (SIGINT) in stage 'elicit': "),
])
def test_failed_stage_leaves_no_partial_folder(exc, code, status, line, tmp_path, capsys):
    out = tmp_path / "runs"
    FAIL["elicit"] = exc
    assert main(["run", "--out", str(out)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(line), err
    run = out / "default"
    assert CALLS == ["baseline", "elicit"]
    assert not (run / "elicit").exists() and not (run / "records" / "elicit.json").exists()
    assert (run / "baseline" / "out.txt").exists() and (run / "records" / "baseline.json").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["elicit"]["status"] == status
    assert type(exc).__name__ in manifest["stages"]["elicit"]["error"]
    FAIL.clear()
    CALLS.clear()
    assert main(["run", "--out", str(out)]) == 0
    assert CALLS == [s.name for s in FAKE_STAGES if s.name != "baseline"]  # the failed stage and what follows


def test_record_write_failure_removes_the_stage(tmp_path, monkeypatch, capsys):
    """A full disk while the record is written: no record, no folder, exit 3."""
    real = rundir.write_json_atomic

    def failing(path, data):
        if path.parent.name == rundir.RECORDS and path.stem == "elicit":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    monkeypatch.setattr(rundir, "write_json_atomic", failing)
    assert main(["run", "--out", str(tmp_path / "runs")]) == 3
    run = tmp_path / "runs" / "default"
    assert "elicit.json: No space left on device" in capsys.readouterr().err
    assert not (run / "elicit").exists() and not (run / "records" / "elicit.json").exists()
    assert json.loads((run / "manifest.json").read_text())["stages"]["elicit"]["status"] == "failed"
    assert not [p for p in run.rglob("*.tmp")], "a temp file was left"


@pytest.mark.parametrize("failure", ["enospc", "eacces"])
def test_disk_full_or_permission_denied_in_a_stage_names_the_file_and_the_stage(failure, tmp_path, capsys):
    """A full disk fails inside write(), whose OSError carries no file name; the message still names the file."""
    def writes_rows(cfg, run_dir):
        target = run_dir.stage_dir("elicit") / "drafts.jsonl"
        (run_dir.stage_dir("elicit") / "questions.jsonl").write_text("{}\n")  # written before the failure
        if failure == "eacces":  # as a library's open() raises it (root would write through a chmod)
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))
        target.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
        rundir.write_jsonl(target, [{"question": "q", "rationale": "r" * 100}] * 100)
        return {"metrics": {}}

    module = sys.modules["bad_inputs_fake.elicit"]
    module.run, real = writes_rows, module.run
    try:
        code = main(["run", "--out", str(tmp_path / "runs")])
    finally:
        module.run = real
    run = tmp_path / "runs" / "default"
    assert code == 3
    problem = "No space left on device" if failure == "enospc" else "Permission denied"
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {run / 'elicit' / 'drafts.jsonl'}: {problem} (in stage 'elicit', whose output "
                           "was removed"), line
    assert not (run / "elicit").exists() and not (run / "records" / "elicit.json").exists()
    assert json.loads((run / "manifest.json").read_text())["stages"]["elicit"]["status"] == "failed"


@pytest.mark.parametrize("message, free, code", [
    ("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598", 0, 3),  # torch.save, disk full
    ("Error while serializing: IoError(Os { code: 28, kind: StorageFull })", 10 << 30, 3),  # safetensors
    ("unexpected pos 704 vs 598", 10 << 30, None),  # with space left: the stage's own error, not a full disk
])
def test_a_library_s_own_error_on_a_full_disk_is_named_as_one(message, free, code, tmp_path, monkeypatch, capsys):
    import collections

    from edge_tailor import pipeline

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: usage(free + 1, 1, free))
    module = sys.modules["bad_inputs_fake.elicit"]

    def raises(cfg, run_dir):
        (run_dir.stage_dir("elicit") / "model.safetensors").write_text("half")
        raise RuntimeError(message)

    module.run, real = raises, module.run
    try:
        if code is None:
            with pytest.raises(RuntimeError, match="unexpected pos"):
                main(["run", "--out", str(tmp_path / "runs")])
        else:
            assert main(["run", "--out", str(tmp_path / "runs")]) == code
    finally:
        module.run = real
    run = tmp_path / "runs" / "default"
    assert not (run / "elicit").exists()  # nothing half-written stays either way
    if code == 3:
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"error: {run / 'elicit'}: the disk is full: RuntimeError: "), line
        assert "in stage 'elicit'" in line


def test_bad_config_on_a_finished_run_keeps_config_yaml(tmp_path, capsys):
    """The audit's case: a missing annotation file on a finished run rewrote config.yaml and removed
    records/elicit.json; now it is refused first."""
    out = tmp_path / "runs"
    assert main(["run", "--out", str(out)]) == 0
    before = _snapshot(out)
    CALLS.clear()
    assert main(["run", "--out", str(out), "--only", "elicit", "elicit.annotate.name=gsm8k",
                 f"elicit.annotate.path={tmp_path / 'missing.jsonl'}"]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    assert _snapshot(out) == before and CALLS == []


def _file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# Each value is refused at load (the config and target schemas, or the preflight's checks against the task),
# never inside a stage after the run directory was changed (the issue's `--only elicit` case deleted elicit/).
BAD_VALUES_ON_A_FINISHED_RUN = {
    "unknown-technique": lambda t: ["elicit.techniques=[nope]"],
    "infinite-beta": lambda t: ["align.beta=inf"],
    "threads-huge": lambda t: ["threads=100000"],
    "test-questions-beyond-split": lambda t: ["evaluate.test_questions=999999999"],
    "duplicate-yaml-key": lambda t: ["--config", t.file("c.yaml", "seed: 1\nseed: 2\n")],
    "duplicate-json-key": lambda t: ["--config", t.file("c.json", '{"seed": 1, "seed": 2}')],
    "budget-infinite": lambda t: _target(t, _set("budgets.model_mb", math.inf)),
    "intra-op-threads-huge": lambda t: _target(t, _set("runtime.intra_op_threads", 100000)),
}


@pytest.mark.parametrize("bad", BAD_VALUES_ON_A_FINISHED_RUN, ids=list(BAD_VALUES_ON_A_FINISHED_RUN))
def test_bad_value_leaves_a_copied_finished_run_byte_identical(bad, tmp_path, capsys):
    t = Ctx(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(t.finished(), copy / "default")
    before = _file_hashes(copy)
    capsys.readouterr()
    assert main(["run", "--out", str(copy), "--only", "elicit", *BAD_VALUES_ON_A_FINISHED_RUN[bad](t)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
    assert CALLS == [] and _file_hashes(copy) == before


def test_run_name_stays_inside_out(tmp_path, capsys):
    out = tmp_path / "a" / "runs"
    assert main(["run", "--out", str(out), "name=../../escaped"]) == 2
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "a").exists()
    assert main(["run", "--out", str(out), "name=ok-name_1.2"]) == 0
    assert (out / "ok-name_1.2" / "config.yaml").exists()


# ---------------------------------------------------------------------------------------------
# The lock: a second process fails at once; a killed holder leaves no lock that blocks.

_HOLDER = textwrap.dedent("""
    import sys, time
    from edge_tailor.rundir import RunDir
    with RunDir(sys.argv[1]).lock():
        print("locked", flush=True)
        time.sleep(120)
""")


def test_lock_from_another_process_then_released_when_it_dies(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--out", str(out)]) == 0
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out / "default")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(out)
        capsys.readouterr()
        CALLS.clear()
        assert main(["run", "--out", str(out), "--force", "elicit"]) == 3
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == (f"error: {out / 'default' / '.lock'}: another tailor process (pid {holder.pid}) "
                       "is using this run directory")
        assert CALLS == [] and _snapshot(out) == before
    finally:
        holder.kill()  # SIGKILL: no cleanup runs; the OS drops the flock
        holder.wait()
    assert main(["run", "--out", str(out), "--force", "elicit"]) == 0
    assert "elicit" in CALLS


def test_lock_is_held_while_stages_run(tmp_path):
    seen = []

    def probe(cfg, run_dir):
        fd = os.open(run_dir.root / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(os.pread(fd, 32, 0).decode().strip())
        finally:
            os.close(fd)
        return {"metrics": {}}

    sys.modules["bad_inputs_fake.baseline"].run, real = probe, sys.modules["bad_inputs_fake.baseline"].run
    try:
        assert main(["run", "--out", str(tmp_path / "runs"), "--only", "baseline"]) == 0
    finally:
        sys.modules["bad_inputs_fake.baseline"].run = real
    assert seen == [str(os.getpid())]
