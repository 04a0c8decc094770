"""llama.cpp as an optional peer (benchmarks/llamacpp.py).

The default tests need no build: llama-bench's JSON (captured from a real run: the embedded student
as F32 GGUF, 2 threads, ``-p 64 -n 32 -r 5``) parsed into ms/token, and the command lines built.
``test_bench_student`` is marked ``slow`` and ``llamacpp``: it needs the llama.cpp build in the cache
(``python -m edge_tailor.benchmarks.llamacpp`` makes it, ~12 min on 2 cores) and FAILS without one,
so deselect it by default with ``-m 'not llamacpp'``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edge_tailor.benchmarks import llamacpp

# llama-bench -m student-f32.gguf -t 2 -p 64 -n 32 -r 5 -o json (build 0c1e570, llama-cpp-python 0.3.36)
STUDENT_F32_JSON = (Path(__file__).parent / "fixtures" / "llamacpp" / "student-f32.json").read_text()


def test_parse_bench_ms_per_token_from_the_tg_test():
    r = llamacpp.parse_bench(STUDENT_F32_JSON)
    assert r["tokens_per_s"] == pytest.approx(7510.02, abs=0.01)
    assert r["ms_per_token"] == pytest.approx(1000 / 7510.021375, abs=1e-4)  # 0.1332 ms
    assert r["ms_per_token_mean_time"] == pytest.approx(4587348 / 1e6 / 32, abs=1e-4)
    assert r["ms_per_token_median"] == pytest.approx(4047805 / 1e6 / 32, abs=1e-4)  # the 7.5 ms run left out
    lo, hi = r["ms_per_token_range"]
    assert lo < r["ms_per_token"] < hi
    assert r["prompt_tokens"] == 64 and r["prompt_tokens_per_s"] == pytest.approx(50177.7, abs=0.1)
    assert (r["new_tokens"], r["threads"], r["repeats"], r["depth"]) == (32, 2, 5, 0)
    assert r["parameters"] == 617344 and r["model_mb"] == pytest.approx(2.47, abs=0.01)
    assert r["build_commit"] == "0c1e570"


def test_parse_bench_tolerates_text_before_the_json_and_needs_a_tg_test():
    assert llamacpp.parse_bench("load: something\n" + STUDENT_F32_JSON)["new_tokens"] == 32
    pp_only = [t for t in json.loads(STUDENT_F32_JSON) if t["n_gen"] == 0]
    with pytest.raises(ValueError, match="token-generation"):
        llamacpp.parse_bench(json.dumps(pp_only))


def test_parse_bench_ignores_the_combined_pg_test():
    tests = json.loads(STUDENT_F32_JSON)
    pg = dict(tests[1], n_prompt=64, avg_ts=1.0)  # -pg 64,32: prompt + generation together, not decode alone
    r = llamacpp.parse_bench(json.dumps([pg, *tests]))
    assert r["tokens_per_s"] == pytest.approx(7510.02, abs=0.01)


def test_bench_and_quantize_command_lines(tmp_path):
    llama = llamacpp.LlamaCpp(tmp_path / "llama.cpp" / llamacpp.VERSION)
    assert llamacpp.bench_command(llama, "m.gguf") == [
        str(llama.bin / "llama-bench"), "-m", "m.gguf", "-t", "2", "-p", "64", "-n", "32", "-r", "5", "-o", "json"]
    assert llamacpp.bench_command(llama, "m.gguf", threads=4, repeats=3, depth=64)[-6:] == [
        "-r", "3", "-d", "64", "-o", "json"]
    assert llamacpp.quantize_command(llama, "f32.gguf", "q4.gguf", "q4_0", threads=2) == [
        str(llama.bin / "llama-quantize"), "f32.gguf", "q4.gguf", "Q4_0", "2"]
    assert llamacpp.quantize_command(llama, "f32.gguf", "q8.gguf")[-1] == "Q8_0"
    with pytest.raises(ValueError, match="unknown quantization"):
        llamacpp.quantize_command(llama, "f32.gguf", "x.gguf", "Q3_X")


def test_convert_command_runs_the_vendored_converter_with_this_python(tmp_path):
    llama = llamacpp.LlamaCpp(tmp_path)
    plain = llamacpp.convert_command(llama, "hf", "out.gguf")
    assert plain == [sys.executable, str(llama.converter), "hf", "--outfile", "out.gguf", "--outtype", "f32"]
    wrapped = llamacpp.convert_command(llama, "hf", "out.gguf", "q8_0", bpe_pre="starcoder")
    assert wrapped[:2] == [sys.executable, "-c"] and wrapped[3:5] == [str(llama.converter), "starcoder"]
    assert wrapped[5:] == ["hf", "--outfile", "out.gguf", "--outtype", "q8_0"]
    compile(wrapped[2], "<wrapper>", "exec")


def test_cache_location_and_no_build_means_none(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_TAILOR_CACHE", str(tmp_path))
    assert llamacpp.cache_root() == tmp_path / "llama.cpp" / llamacpp.VERSION
    reasons = []
    assert llamacpp.find_or_build(build=False, log=reasons.append) is None
    assert len(reasons) == 1 and "no build" in reasons[0]
    with pytest.raises(RuntimeError, match="find_or_build"):
        llamacpp.bench("m.gguf")


def test_without_cmake_it_says_why_and_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(llamacpp.shutil, "which", lambda name: None)
    monkeypatch.setattr(llamacpp.subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    reasons = []
    assert llamacpp.find_or_build(cache=tmp_path, log=reasons.append) is None
    assert reasons == ["[llama.cpp] cannot build: cmake not found on PATH"]


def test_find_wants_a_complete_build_made_with_todays_flags(tmp_path):
    llama = llamacpp.LlamaCpp(llamacpp.cache_root(tmp_path))
    llama.bin.mkdir(parents=True)
    llama.src.mkdir(parents=True)
    llama.converter.write_text("")
    for tool in (llama.llama_bench, llama.llama_quantize):
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    assert llamacpp.find(tmp_path) is None  # no build.json: made by hand or by an older recipe
    (llama.root / "build.json").write_text(json.dumps({"cmake_flags": list(llamacpp.CMAKE_FLAGS)[:-1]}))
    assert llamacpp.find(tmp_path) is None  # other flags (e.g. before AMX was turned off): rebuild
    (llama.root / "build.json").write_text(json.dumps({"cmake_flags": llamacpp.cmake_flags()}))
    assert llamacpp.find(tmp_path) == llama
    llama.llama_quantize.unlink()
    assert llamacpp.find(tmp_path) is None


def test_cmake_flags_build_no_tests_no_server_and_no_amx_on_x86(monkeypatch):
    monkeypatch.setattr(llamacpp.platform, "machine", lambda: "x86_64")
    flags = llamacpp.cmake_flags()
    assert {"-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"} <= set(flags)
    assert f"-DCMAKE_CXX_FLAGS={llamacpp.NO_AMX}" in flags and "-mno-amx-int8" in llamacpp.NO_AMX
    monkeypatch.setattr(llamacpp.platform, "machine", lambda: "aarch64")
    assert llamacpp.cmake_flags() == list(llamacpp.CMAKE_FLAGS)


def test_find_smollm2_wants_a_complete_folder(tmp_path):
    assert llamacpp.find_smollm2(tmp_path / "missing") is None
    partial = tmp_path / ".tmp-SmolLM2-135M-Instruct.Q4_1-0123456789abcdef-x1"  # gguf_cache still writing it
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    (partial / "model.safetensors").write_bytes(b"")
    (tmp_path / "SmolLM2-135M-Instruct").mkdir()
    (tmp_path / "SmolLM2-135M-Instruct" / "config.json").write_text("{}")
    assert llamacpp.find_smollm2(tmp_path) is None  # no weights yet: still being built
    (tmp_path / "SmolLM2-135M-Instruct" / "model.safetensors").write_bytes(b"")
    assert llamacpp.find_smollm2(tmp_path) == tmp_path / "SmolLM2-135M-Instruct"


def test_cpu_info_has_model_flags_and_load():
    info = llamacpp.cpu_info()
    assert info["cpu"] and info["cores"] >= 1 and len(info["loadavg"]) == 3
    assert set(info["cpu_flags"]) <= {"avx512_vnni", "avx_vnni", "amx_int8", "avx512f", "avx2"}


@pytest.mark.slow
@pytest.mark.llamacpp
def test_bench_student(tmp_path):
    """The embedded student -> F32 GGUF -> Q8_0 -> llama-bench. Fails (never skips) without a build."""
    from edge_tailor.models import resolve_model_path

    llama = llamacpp.find()
    assert llama is not None, (f"no llama.cpp build in {llamacpp.cache_root()}: run "
                               "`python -m edge_tailor.benchmarks.llamacpp` or deselect with -m 'not llamacpp'")
    # its byte-level BPE pre-tokenizer (digits split, then GPT-2) is unknown to the converter: named explicitly
    f32 = llama.to_gguf(Path(resolve_model_path("embedded:student")), tmp_path / "student-f32.gguf",
                        bpe_pre=llamacpp.DIGITS_GPT2)
    q8 = llama.quantize(f32, tmp_path / "student-q8_0.gguf", "Q8_0")
    assert 0 < q8.stat().st_size < f32.stat().st_size
    for path in (f32, q8):
        r = llama.bench(path, threads=2, prompt_tokens=16, new_tokens=8, repeats=3)
        assert r["new_tokens"] == 8 and r["threads"] == 2 and r["repeats"] == 3 and r["parameters"] == 617344
        # a sanity bound, not a speed test: one stalled run on a shared box can cost 100+ ms (median left alone)
        assert 0 < r["ms_per_token_median"] < 1000 and r["ms_per_token"] > 0 and r["prompt_tokens_per_s"] > 0
