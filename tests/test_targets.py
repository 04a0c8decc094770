import re
import tomllib
from importlib import resources

import pytest

from edge_tailor.errors import InputError
from edge_tailor.target import Budget, Target, format_budgets, list_targets, load_target, target_hash, target_path

SHIPPED = ["arm64-a76", "ci-x86", "x86-avx2-ipc", "x86-avx512-vnni", "x86-w8"]
CI = (resources.files("edge_tailor.targets") / "ci-x86.toml").read_text()


def test_list_targets():
    assert list_targets() == SHIPPED


@pytest.mark.parametrize("name", list_targets())
def test_shipped_target_loads(name):
    t = load_target(name)
    assert isinstance(t, Target) and t.name == name and target_path(name).name == f"{name}.toml"
    assert t.runtime.engine == "onnxruntime" and t.runtime.intra_op_threads >= 1
    assert all(isinstance(v, int) and v >= 1 for v in (t.bench.prompt_tokens, t.bench.new_tokens, t.bench.batch))
    # The quant block round-trips: what QAT reads is what the exporter reads.
    assert type(t.quant).model_validate(t.quant.model_dump()) == t.quant
    assert Target.model_validate(t.model_dump()) == t
    budgets = t.budgets.items()
    assert budgets and all(isinstance(b, Budget) and isinstance(b.limit, float) for b in budgets)
    assert {b.kind for b in budgets} <= {"absolute", "relative"}
    assert [name for name, _ in format_budgets(t)] == [b.name for b in budgets]
    assert re.fullmatch(r"[0-9a-f]{64}", target_hash(t))
    assert load_target(str(target_path(name))) == t  # a path works as well as a name


def test_ci_target_scheme_and_relative_budget():
    t = load_target("ci-x86")
    w, a = t.quant.weights, t.quant.activations
    assert (w.dtype, w.symmetric, w.granularity) == ("int8", True, "per_channel")
    assert (a.dtype, a.symmetric, a.granularity, a.mode) == ("int8", False, "per_token", "dynamic")
    # exact on every x86-64 with AVX2: 7-bit weights never saturate VPMADDUBSW, and QAT simulates 7 bits
    assert t.target.isa == "avx2" and t.quant.reduce_range and t.quant.weight_bits == 7
    assert t.quant.quantize_lm_head and t.runtime.intra_op_threads == 2
    kinds = {b.name: b.kind for b in t.budgets.items()}
    assert kinds["ms_per_token_vs_torch_fp32"] == "relative" and kinds["max_accuracy_drop"] == "absolute"
    assert ("ms_per_token_vs_torch_fp32", "<= 0.35 x PyTorch fp32 (relative)") in format_budgets(t)


def test_arm64_ships_int4_blocks_and_avx2_reduces_range():
    blocks = load_target("arm64-a76").quant.weight_only_blocks
    assert (blocks.enabled, blocks.bits, blocks.block_size, blocks.accuracy_level) == (True, 4, 128, 4)
    assert load_target("x86-avx2-ipc").quant.weight_bits == 7


def test_hash_ignores_comments_and_follows_values(tmp_path):
    a, b, c = (tmp_path / d / "ci-x86.toml" for d in "abc")
    for path in (a, b, c):
        path.parent.mkdir()
    a.write_text(CI)
    b.write_text(re.sub(r"  # .*", "", CI))
    c.write_text(CI.replace("repeats = 5", "repeats = 6"))
    assert target_hash(load_target(a)) == target_hash(load_target(b)) == target_hash(load_target("ci-x86"))
    assert target_hash(load_target(c)) != target_hash(load_target(a))


@pytest.mark.parametrize("name", list_targets())
def test_every_value_says_why(name):
    text = (resources.files("edge_tailor.targets") / f"{name}.toml").read_text()
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(r"\s*[\w\"-]+\s*=", line):
            assert re.search(r"\S\s+#\s+\S", line), f"{name}.toml line {n} sets a value without saying why: {line}"


def _error(tmp_path, text, name="bad.toml"):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as e:
        load_target(path)
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message
    return e.value


def test_toml_syntax_error_names_line(tmp_path):
    e = _error(tmp_path, CI.replace("batch = 1", "batch = = 1"))
    line = next(n for n, s in enumerate(CI.splitlines(), 1) if s.startswith("batch ="))
    assert e.where == f"line {line}" and "TOML" in e.problem


def test_unknown_field_lists_allowed(tmp_path):
    e = _error(tmp_path, CI.replace("[runtime]\n", "[runtime]\nthreads = 2\n"))
    assert e.where == "runtime.threads" and "unknown field" in e.problem and "intra_op_threads" in e.problem


def test_wrong_type(tmp_path):
    e = _error(tmp_path, re.sub(r"intra_op_threads = 2", 'intra_op_threads = "two"', CI))
    assert "bad.toml: runtime.intra_op_threads: " in str(e) and "integer" in e.problem and "'two'" in e.problem


def test_bad_enum_value(tmp_path):
    e = _error(tmp_path, CI.replace('dtype = "int8"  # s8', 'dtype = "fp8"  # s8'))
    assert e.where == "quant.weights.dtype"


def test_per_group_needs_group_size(tmp_path):
    e = _error(tmp_path, CI.replace('granularity = "per_channel"', 'granularity = "per_group"'))
    assert e.where == "quant.weights.group_size" and "per_group" in e.problem


def test_missing_section(tmp_path):
    e = _error(tmp_path, CI.split("[budgets]")[0])
    assert e.where == "budgets" and "missing" in e.problem


@pytest.mark.parametrize(
    ("edit", "where", "words"),
    [
        (('mode = "dynamic"', 'mode = "static"'), "quant.activations", "calibration_samples"),
        (('dtype = "int8"  # s8', 'dtype = "int4"  # s8'), "quant", "weight_only_blocks"),
        (("symmetric = false", "symmetric = true"), "quant.activations", "asymmetric"),
        (("ms_per_token_vs_torch_fp32 = 0.35", "ms_per_token_vs_torch_fp32 = 0"), "budgets.relative.ms_per_token_vs_torch_fp32", "greater than 0"),
    ],
)
def test_inconsistent_scheme(tmp_path, edit, where, words):
    e = _error(tmp_path, CI.replace(*edit))
    assert e.where == where and words in e.problem


@pytest.mark.parametrize(
    ("edit", "where", "words"),
    [
        (('isa = "avx2"', 'isa = "dotprod"'), "target", "arm64 instruction set"),
        (('isa = "avx2"', 'isa = "sse4"'), "target.isa", "avx512_vnni"),
        (("reduce_range = true", "reduce_range = false"), None, "quant.reduce_range: u8 x s8 with full-range"),
    ],
)
def test_isa_must_fit_arch_and_scheme(tmp_path, edit, where, words):
    e = _error(tmp_path, CI.replace(*edit))
    assert e.where == where and words in e.problem, e


def test_full_range_weights_are_fine_on_vnni(tmp_path):
    path = tmp_path / "ci-x86.toml"
    path.write_text(CI.replace('isa = "avx2"', 'isa = "avx512_vnni"').replace("reduce_range = true", "reduce_range = false"))
    assert load_target(path).quant.weight_bits == 8


def test_name_must_equal_file_name(tmp_path):
    e = _error(tmp_path, CI, name="my-device.toml")
    assert e.where == "target.name" and "'ci-x86' differs from the file name 'my-device'" in e.problem
    bundled = tmp_path / "target.toml"  # a bundle's copy keeps its name inside
    bundled.write_text(CI)
    assert load_target(bundled).name == "ci-x86"


def test_unknown_target_lists_known():
    with pytest.raises(InputError) as e:
        load_target("pi-zero")
    assert str(e.value).startswith("pi-zero: unknown target") and all(n in str(e.value) for n in SHIPPED)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such target file"):
        load_target(tmp_path / "nope.toml")


def test_shipped_files_are_plain_toml():
    for name in list_targets():
        assert tomllib.loads((resources.files("edge_tailor.targets") / f"{name}.toml").read_text())["target"]["name"] == name
