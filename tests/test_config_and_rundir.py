import json

import pytest

from edge_tailor.config import RunConfig, apply_override, load_config
from edge_tailor.errors import InputError
from edge_tailor.pipeline import Stage, run_pipeline
from edge_tailor.rundir import RunDir, sha256_file

import fake_stages

STAGES = (
    Stage("first", "writes a file", sections=("elicit",), module_name="fake_stages.first"),
    Stage("second", "depends on first", needs=("first",), sections=("distill",), module_name="fake_stages.second"),
)


def test_default_config_is_the_embedded_world():
    cfg = load_config()
    assert cfg.teacher.path == "embedded:teacher" and cfg.task.name == "toy-arith" and cfg.target == "ci-x86"


def test_overrides_parse_types_and_nest():
    cfg = load_config(None, ["distill.lora.r=8", "elicit.temperature=0.7", "distill.qat=false", "name=x"])
    assert cfg.distill.lora.r == 8 and cfg.elicit.temperature == 0.7 and cfg.distill.qat is False and cfg.name == "x"


def test_override_error_names_the_field():
    with pytest.raises(InputError, match=r"command line: distill\.lora\.r: .*integer"):
        load_config(None, ["distill.lora.r=many"])
    with pytest.raises(InputError, match="key.sub=value"):
        apply_override({}, "novalue")


def test_unknown_field_in_file_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill:\n  lora:\n    rank: 4\n")
    with pytest.raises(InputError, match=r"bad\.yaml: distill\.lora\.rank: Extra inputs"):
        load_config(bad)


def test_malformed_yaml_and_toml(tmp_path):
    (tmp_path / "a.yaml").write_text("seed: [1,\n")
    (tmp_path / "b.toml").write_text("seed = = 1\n")
    with pytest.raises(InputError, match=r"a\.yaml: line 2: not valid YAML"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(InputError, match=r"b\.toml: line 1: not valid TOML"):
        load_config(tmp_path / "b.toml")


def test_toml_config_with_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 3\n[distill]\nmax_steps = 10\n')
    cfg = load_config(path, ["distill.max_steps=20"])
    assert cfg.seed == 3 and cfg.distill.max_steps == 20


def _run(tmp_path, cfg, **kw):
    return run_pipeline(cfg, RunDir(tmp_path / "run"), "target-digest", stages=STAGES, **kw)


@pytest.fixture(autouse=True)
def _reset():
    fake_stages.CALLS.clear()
    fake_stages.FAIL.clear()


def test_finished_stages_are_skipped_and_manifest_has_hashes(tmp_path):
    cfg = RunConfig()
    _run(tmp_path, cfg)
    assert fake_stages.CALLS == ["first", "second"]
    _run(tmp_path, cfg)
    assert fake_stages.CALLS == ["first", "second"]  # nothing redone
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    out = tmp_path / "run" / "first" / "out.txt"
    assert manifest["stages"]["first"]["artifacts"]["first/out.txt"] == sha256_file(out)
    assert manifest["stages"]["second"]["status"] == "done"
    assert {"packages", "seed", "config_hash", "git_revision"} <= manifest.keys()


def test_changed_config_redoes_only_what_depends_on_it(tmp_path):
    _run(tmp_path, RunConfig())
    fake_stages.CALLS.clear()
    _run(tmp_path, RunConfig.model_validate({"distill": {"max_steps": 5}}))
    assert fake_stages.CALLS == ["second"]
    fake_stages.CALLS.clear()
    _run(tmp_path, RunConfig.model_validate({"distill": {"max_steps": 5}, "elicit": {"drafts": 3}}))
    assert fake_stages.CALLS == ["first", "second"]  # upstream change propagates


def test_interrupted_stage_is_redone_and_leaves_no_record(tmp_path):
    cfg = RunConfig()
    fake_stages.FAIL.add("second")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, cfg)
    run = RunDir(tmp_path / "run")
    assert run.record("first") is not None and run.record("second") is None
    assert run.manifest()["stages"]["second"]["status"] == "interrupted"
    fake_stages.FAIL.clear()
    fake_stages.CALLS.clear()
    _run(tmp_path, cfg)
    assert fake_stages.CALLS == ["second"]


def test_force_redoes_a_stage(tmp_path):
    _run(tmp_path, RunConfig())
    fake_stages.CALLS.clear()
    _run(tmp_path, RunConfig(), force={"first"})
    assert fake_stages.CALLS == ["first", "second"]
