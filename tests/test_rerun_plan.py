"""What a rerun redoes: a changed target redoes exactly the stages that read it and what follows them."""

from edge_tailor.config import load_config
from edge_tailor.pipeline import STAGE_NAMES, plan
from edge_tailor.rundir import RunDir, write_json_atomic
from edge_tailor.target import load_target, target_hash


def _finish_all(run: RunDir, cfg, digest: str) -> None:
    for st, fp, _ in plan(cfg, run, digest):
        write_json_atomic(run.record_path(st.name), {"stage": st.name, "fingerprint": fp, "metrics": {}})


def test_changed_target_redoes_distill_and_what_follows(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = load_config()
    _finish_all(run, cfg, target_hash(load_target("ci-x86")))
    assert [st.name for st, _, must in plan(cfg, run, target_hash(load_target("ci-x86"))) if must] == []
    redo = [st.name for st, _, must in plan(cfg, run, target_hash(load_target("x86-avx2-ipc"))) if must]
    # the ARTE stages never read the target; QAT (distill) does, and everything downstream of it follows
    assert redo == ["distill", "ablation", "export", "bench", "report"]


def test_changed_section_redoes_its_readers_only(tmp_path):
    run = RunDir(tmp_path / "run")
    digest = target_hash(load_target("ci-x86"))
    _finish_all(run, load_config(), digest)
    redo = [st.name for st, _, must in plan(load_config(None, ["bench.reference_rounds=3"]), run, digest) if must]
    assert redo == ["bench", "report"]
    forced = [st.name for st, _, must in plan(load_config(), run, digest, force={"prefer"}) if must]
    assert forced == list(STAGE_NAMES[STAGE_NAMES.index("prefer"):])


def test_more_ablation_seeds_redo_the_ablation_not_the_student(tmp_path):
    run = RunDir(tmp_path / "run")
    digest = target_hash(load_target("ci-x86"))
    _finish_all(run, load_config(), digest)
    redo = [st.name for st, _, must in plan(load_config(None, ["distill.ablation_seeds=5"]), run, digest) if must]
    assert redo == ["ablation", "report"]
    redo = [st.name for st, _, must in plan(load_config(None, ["distill.max_steps=7"]), run, digest) if must]
    assert redo == ["distill", "ablation", "export", "bench", "report"]


def test_the_qat_vs_ptq_arms_redo_the_ablation_not_the_student_and_export_keys_it_never_reads_leave_it(tmp_path):
    run = RunDir(tmp_path / "run")
    digest = target_hash(load_target("ci-x86"))
    _finish_all(run, load_config(), digest)
    redo = [st.name for st, _, must in plan(load_config(None, ["distill.compare_ptq=true"]), run, digest) if must]
    assert redo == ["ablation", "report"]
    redo = [st.name for st, _, must in plan(load_config(None, ["export.parity_prompts=3"]), run, digest) if must]
    assert redo == ["export", "bench", "report"]
    # the arms' fidelity is measured like the export's: its prompts and tokens are the ablation's inputs too
    redo = [st.name for st, _, must in plan(load_config(None, ["export.fidelity_tokens=9"]), run, digest) if must]
    assert redo == ["ablation", "export", "bench", "report"]
