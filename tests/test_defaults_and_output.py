"""One source of defaults (the pydantic fields are the shipped run; a user file layers over them) and a
quiet terminal (library warnings, logging and prints go to <run>/log.txt unless `tailor -v`)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import yaml

import edge_tailor.pipeline as pipeline
from edge_tailor.cli import main
from edge_tailor.config import RunConfig, Section, config_diff, config_source, load_config
from edge_tailor.errors import InputError

# ---------------------------------------------------------------------------------------------
# Defaults


def test_shipped_default_yaml_is_the_field_defaults():
    assert load_config() == RunConfig()
    assert config_diff(load_config()) == []


def test_every_key_the_shipped_yaml_writes_restates_its_default():
    """default.yaml is a recipe for a reader: each value it writes is the field default, key by key."""
    data = yaml.safe_load(config_source().read_text())
    defaults = RunConfig().model_dump(mode="json")

    def leaves(prefix, node):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(f"{prefix}{key}.", value)
            else:
                yield f"{prefix}{key}", value

    for key, value in leaves("", data):
        default = defaults
        for part in key.split("."):
            default = default[part]
        assert value == default, f"default.yaml sets {key}: {value!r}, the field default is {default!r}"


def test_sections_used_alone_have_the_shipped_defaults():
    """DistillConfig() etc. (used alone in tests and helpers) are the shipped run's sections too: a section's
    default in RunConfig is its class's plain defaults, never a patched instance."""
    for name, field in RunConfig.model_fields.items():
        if name in ("teacher", "student"):  # ModelSpec is shared; RunConfig names the two embedded models
            continue
        if isinstance(field.default, Section):
            assert field.default == type(field.default)(), name


def test_a_user_file_changes_only_what_it_sets(tmp_path):
    (tmp_path / "my.yaml").write_text("distill:\n  max_steps: 7\n")
    (tmp_path / "my.toml").write_text("[distill]\nmax_steps = 7\n")
    for name in ("my.yaml", "my.toml"):
        cfg = load_config(tmp_path / name)
        assert config_diff(cfg) == [("distill.max_steps", 60, 7)]
        assert cfg == load_config(None, ["distill.max_steps=7"])


def test_a_null_section_means_its_defaults(tmp_path):
    """`distill:` with every key below it commented out is YAML null: the section's defaults, not an error."""
    path = tmp_path / "c.yaml"
    path.write_text("distill:\ntask: null\nelicit:\n  annotate:\nalign:\n  rounds: 2\n")
    assert config_diff(load_config(path)) == [("align.rounds", 1, 2)]
    path.write_text("distill:\n  lora:\n  max_steps: 7\n")
    assert config_diff(load_config(path)) == [("distill.max_steps", 60, 7)]
    path.write_text("distill:\n")  # an override into a null section
    assert config_diff(load_config(path, ["distill.lora.r=4"])) == [("distill.lora.r", 16, 4)]
    path.write_text("seed:\n")  # a null value (not a section) is still refused, naming file and field
    with pytest.raises(InputError, match=r"c\.yaml: seed: .*integer"):
        load_config(path)


def test_config_show_diff(tmp_path, capsys):
    path = tmp_path / "my.yaml"
    path.write_text("distill:\n  max_steps: 7\nname: mine\n")
    assert main(["config", "show", "--diff", "--config", str(path), "elicit.drafts=64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ['name: "default" -> "mine"', "elicit.drafts: 48 -> 64", "distill.max_steps: 60 -> 7"]
    assert main(["config", "show", "--diff"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no differences" in captured.err
    assert main(["config", "show", "--diff", "elicit.annotate.name=gsm8k", "elicit.annotate.path=x.jsonl"]) == 0
    assert capsys.readouterr().out.startswith('elicit.annotate: null -> {"name": "gsm8k", "path": "x.jsonl"')


# ---------------------------------------------------------------------------------------------
# Quiet by default: a stand-in stage makes the noise the libraries make.

NOISE = ("noisy-warning", "noisy-torch-log", "noisy-transformers-log", "{'loss': 0.123}", "noisy-fd-write",
         "noisy-child-process")


def _noisy_run(cfg, run_dir):
    warnings.warn("noisy-warning", UserWarning)
    logging.getLogger("torch").warning("noisy-torch-log")  # torch's logger has its own stderr handler
    logging.getLogger("transformers").warning("noisy-transformers-log")
    print({"loss": 0.123})  # what a trainer prints
    os.write(2, b"noisy-fd-write\n")  # a C++ library
    subprocess.run([sys.executable, "-c", "import sys; print('noisy-child-process', file=sys.stderr)"], check=True)
    return {"metrics": {}}


sys.modules["noisy_fake"] = types.SimpleNamespace(run=_noisy_run)
NOISY_STAGES = (pipeline.Stage("noisy", "makes library noise", module_name="noisy_fake"),)


def _terminal_lines_are_ours(err: str) -> None:
    assert "> noisy" in err and "done in" in err
    assert any(line.startswith(("INT8 kernel", "WARNING: INT8 kernel differs")) for line in err.splitlines())


def test_library_noise_goes_to_the_run_log(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(pipeline, "STAGES", NOISY_STAGES)
    out = tmp_path / "runs"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        show, call = warnings.showwarning, logging.Logger.callHandlers
        assert main(["run", "--out", str(out)]) == 0
        assert (warnings.showwarning, logging.Logger.callHandlers) == (show, call)  # routing ends with the command
    captured = capfd.readouterr()
    log = (out / "default" / "log.txt").read_text()
    for noise in NOISE:
        assert noise in log, noise
        assert noise not in captured.err and noise not in captured.out, noise
    _terminal_lines_are_ours(captured.err)
    assert "run directory:" in captured.out
    assert main(["run", "--out", str(out)]) == 0  # the stage is up to date: a header line, appended
    again = (out / "default" / "log.txt").read_text()
    assert again.startswith(log) and again[len(log):].startswith("--- ") and again.count("noisy-torch-log") == 1


def test_noise_before_the_run_directory_is_kept_for_its_log_or_dropped(tmp_path, monkeypatch, capsys):
    """Imports during the preflight warn before the run directory exists: that goes to its log.txt once the
    run starts, and nowhere (not the terminal, no file) when a bad input stops the command."""
    monkeypatch.setattr(pipeline, "STAGES", NOISY_STAGES)
    real = pipeline.preflight

    def noisy_preflight(*args, **kwargs):
        logging.getLogger("torchao").warning("noise-before-the-run-directory")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "preflight", noisy_preflight)
    bad = tmp_path / "bad"
    assert main(["run", "--out", str(bad), "elicit.annotate.name=gsm8k"]) == 2  # refused by the preflight
    err = capsys.readouterr().err
    assert not bad.exists() and "noise-before" not in err
    assert [line for line in err.splitlines() if not line.startswith("INT8 kernel")][0].startswith("error: ")
    out = tmp_path / "runs"
    assert main(["run", "--out", str(out)]) == 0
    assert "noise-before" not in capsys.readouterr().err
    assert (out / "default" / "log.txt").read_text().count("noise-before-the-run-directory") == 1


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import edge_tailor.pipeline as pipeline
    import test_defaults_and_output as t
    from edge_tailor.cli import main
    pipeline.STAGES = t.NOISY_STAGES
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("verbose", [False, True])
def test_a_real_terminal_is_quiet_unless_verbose(verbose, tmp_path):
    """The command in its own process (stderr a real file descriptor, the interpreter's own warning and
    logging setup): quiet by default, everything on stderr as before with `tailor -v`."""
    script = tmp_path / "noisy_tailor.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "runs"
    argv = ["-v"] * verbose + ["run", "--out", str(out)]
    done = subprocess.run([sys.executable, "-W", "always::UserWarning", str(script), *argv], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (out / "default" / "log.txt").read_text()
    _terminal_lines_are_ours(done.stderr)
    for noise in NOISE:
        terminal = done.stderr + done.stdout
        assert (noise in terminal) == verbose, (noise, terminal)
        assert (noise in log) != verbose, (noise, log)


def test_without_a_terminal_long_loops_print_a_progress_line_a_minute(monkeypatch):
    import io

    from edge_tailor import progress

    clock = iter(range(0, 10_000, 25))  # each item takes 25 s
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    buffer = io.StringIO()
    monkeypatch.setattr(progress.console, "file", buffer)
    monkeypatch.delenv("EDGE_TAILOR_QUIET", raising=False)
    assert list(progress.track(range(10), "scoring drafts", total=10)) == list(range(10))
    lines = buffer.getvalue().splitlines()
    # 250 s over 10 items: a line after 75 s (3 done), 150 s (6), 225 s (9), each with the time left
    assert lines == ["  scoring drafts: 3/10 in 75 s, ~175 s left", "  scoring drafts: 6/10 in 150 s, ~100 s left",
                     "  scoring drafts: 9/10 in 225 s, ~25 s left"]
    monkeypatch.setenv("EDGE_TAILOR_QUIET", "1")  # a worker process: its parent reports
    buffer.truncate(0)
    assert list(progress.track(range(10), "scoring drafts", total=10)) == list(range(10))
    assert buffer.getvalue() == ""
