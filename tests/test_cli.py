"""The CLI's contract: help works, bad input is one line naming file and field, exit 2, nothing written."""

import pytest

from edge_tailor.cli import main


def _err(capsys):
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["toy", "build", "--help"]])
def test_help_teaches(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: tailor" in capsys.readouterr().out


def test_targets_and_config_show(capsys):
    assert main(["targets"]) == 0
    assert "ci-x86" in capsys.readouterr().out
    assert main(["config", "show", "distill.lora.r=4"]) == 0
    assert "r: 4" in capsys.readouterr().out


def _bad_run(tmp_path, capsys, *argv):
    out = tmp_path / "runs"
    code = main(["run", "--out", str(out), *argv])
    message = _err(capsys)
    assert code == 2
    assert not out.exists(), "bad input must leave no partial output"
    assert len(message.splitlines()) == 1
    return message


def test_bad_config_value(tmp_path, capsys):
    assert "elicit.temperature" in _bad_run(tmp_path, capsys, "elicit.temperature=hot")


def test_bad_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  dtype: float8\n")
    message = _bad_run(tmp_path, capsys, "--config", str(cfg))
    assert "c.yaml" in message and "teacher.dtype" in message


def test_unknown_target(tmp_path, capsys):
    assert "unknown target" in _bad_run(tmp_path, capsys, "--target", "pdp-11")


def test_malformed_target_file(tmp_path, capsys):
    target = tmp_path / "t.toml"
    target.write_text("[target]\nname = 'x'\n[runtime]\nintra_op_threads = 'two'\n")
    message = _bad_run(tmp_path, capsys, "--target", str(target))
    assert "t.toml" in message


def test_malformed_dataset_line(tmp_path, capsys):
    data = tmp_path / "gsm.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2 #### 2"}\n{"question": "x", "answer": "no marker"}\n')
    message = _bad_run(tmp_path, capsys, "task.name=gsm8k", f"task.path={data}")
    assert "gsm.jsonl" in message and "line 2" in message


def test_status_of_missing_run(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in _err(capsys)
