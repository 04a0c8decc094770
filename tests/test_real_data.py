"""The ARTE stages on a real-format task (a BBH excerpt) with the embedded tiny models: the
loaders, prompts, parsers and scoring run end to end and the records say what happened
(accuracy is near zero: these models never saw such text)."""

import json
from pathlib import Path

import pytest

from edge_tailor.cli import main

pytestmark = pytest.mark.slow
BBH = Path(__file__).parent / "fixtures" / "bbh"


def test_arte_stages_on_bbh(tmp_path):
    args = ["run", "--out", str(tmp_path), "name=bbh", "threads=1", "task.name=bbh",
            f"task.path={BBH / 'tasks' / 'navigate.json'}", f"task.cot_prompt={BBH / 'cot-prompts' / 'navigate.txt'}",
            "elicit.drafts=4", "elicit.max_new_tokens=48", "elicit.rationale_tokens=32", "prefer.max_new_tokens=16",
            "prefer.probe_demos=2", "generate.examples=4", "generate.compare_questions=4",
            "generate.compare_preference=4", "align.max_steps=2",
            "--only", "elicit", "--only", "prefer", "--only", "align", "--only", "generate"]
    assert main(args) == 0
    run = tmp_path / "bbh"
    record = lambda s: json.loads((run / "records" / f"{s}.json").read_text())["metrics"]  # noqa: E731
    elicit = record("elicit")
    assert elicit["raw_questions"] == elicit["questions_kept"] + sum(elicit["questions_dropped"].values())
    from edge_tailor.tasks.bbh import load_bbh

    assert elicit["techniques"] == list(load_bbh(BBH / "tasks" / "navigate.json").techniques)
    prefer = record("prefer")
    # probes: 2 one-shot conditions (prefer.probe_demos=2) from the teacher's well-formed drafts, or, when the
    # toy teacher drafts fewer than 2 usable ones on real BBH text (it does: it never saw such text), the
    # task's own CoT rationales; with 2 probes the discrimination index picks the preference set
    source = "drafts" if elicit["rationales_well_formed"] >= 2 else "seed rationales"
    assert prefer["preference_set"]["probes"] == f"2 {source}"
    assert prefer["preference_set"]["method"] == "discrimination_index"
    assert prefer["preference_set"]["kept"] == 4
    generate = record("generate")
    assert set(generate["data"]) == {"original", "aligned"}
    for which in ("original", "aligned"):
        assert (run / "generate" / f"{which}.jsonl").exists()
