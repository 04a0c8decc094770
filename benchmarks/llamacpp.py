"""llama.cpp as an optional peer: built from the ``llama-cpp-python`` sdist, measured on the same weights.

    python -m edge_tailor.benchmarks.llamacpp [--no-build] [--models student,smollm2] [--wait-smollm2 1200]

``find_or_build`` downloads the ``llama-cpp-python`` sdist from PyPI (it vendors llama.cpp under
``vendor/llama.cpp``), and builds only ``llama-bench`` and ``llama-quantize`` (CPU, ``GGML_NATIVE``)
in ``${EDGE_TAILOR_CACHE:-~/.cache/edge-tailor}/llama.cpp/<version>/``, never inside the repository.
It returns None, with a one-line reason, when that cannot be done (no cmake or compiler, no PyPI,
the build failed): the peer is optional.

``to_gguf`` converts a Hugging Face folder with the vendored ``convert_hf_to_gguf.py`` (run with this
interpreter and the vendored ``gguf-py``; ``sentencepiece``, which the converter imports even for BPE
tokenizers, is installed into the cache, not into the environment). ``quantize`` runs
``llama-quantize`` (Q8_0, Q4_0, ...); ``bench`` runs ``llama-bench -o json`` and returns ms per generated
token (1000 / the tg test's mean tokens/s) and the prompt-processing rate.

llama-bench's tg test decodes from an empty context with random token ids (the prompt test is timed
apart), so its ms/token is not measured exactly as ``benchmarks/peers.py`` measures (decode after the
64-token prompt, through each engine's own loop); ``depth=64`` benches tg after a 64-token context.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

VERSION = "0.3.36"  # llama-cpp-python on PyPI; the llama.cpp it vendors is what gets built
TARGETS = ("llama-bench", "llama-quantize")
# LLAMA_CURL is deprecated in this llama.cpp (it warns and does nothing); OPENSSL off: nothing is fetched.
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
               "-DLLAMA_OPENSSL=OFF")
# AMX off (x86): ggml's AMX kernels die with SIGILL at their first `tilezero` here (Q8_0/Q4_0 matmuls;
# llama.cpp PR #26954: the tile config is optimized away / XTILEDATA asked on the main thread only), and
# no edge target has AMX; AVX-512 VNNI, AVX-VNNI and the repacked Q4_0/Q8_0 kernels stay on.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
SENTENCEPIECE = "sentencepiece>=0.1.98,<0.3.0"  # the converter's requirement (requirements-convert_*.txt)
QTYPES = ("Q8_0", "Q4_0", "Q4_K_M", "Q5_0", "Q6_K", "F16", "BF16")
# Digits one by one, then the GPT-2 byte-level regex: the student's pre-tokenizer (Split \d + ByteLevel),
# which llama.cpp implements as the starcoder/refact/smollm pre-type.
DIGITS_GPT2 = "starcoder"

Log = Callable[[str], None]


def cmake_flags() -> list[str]:
    """The configure flags: ``CMAKE_FLAGS``, plus AMX off where the compiler knows the option (x86)."""
    flags = list(CMAKE_FLAGS)
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    return flags


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """``<cache>/llama.cpp/<version>``; the cache defaults to ``$EDGE_TAILOR_CACHE`` or ``~/.cache/edge-tailor``."""
    base = Path(cache) if cache else Path(os.environ.get("EDGE_TAILOR_CACHE") or Path.home() / ".cache" / "edge-tailor")
    return base.expanduser() / "llama.cpp" / VERSION


@dataclass(frozen=True)
class LlamaCpp:
    """A built llama.cpp: where its tools, converter and helper packages are (all under ``root``)."""

    root: Path

    def __post_init__(self):
        source, tools = self.root / "src" / "vendor" / "llama.cpp", self.root / "build" / "bin"
        for name, path in (("src", source), ("bin", tools), ("llama_bench", tools / "llama-bench"),
                           ("llama_quantize", tools / "llama-quantize"),
                           ("converter", source / "convert_hf_to_gguf.py"), ("pydeps", self.root / "pydeps")):
            object.__setattr__(self, name, path)  # frozen: derived once from root

    @property
    def info(self) -> dict:
        path = self.root / "build.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def to_gguf(self, hf_folder, out, outtype: str = "f32", **kw) -> Path:
        return to_gguf(hf_folder, out, outtype, llama=self, **kw)

    def quantize(self, f32_gguf, out, qtype: str = "Q8_0", **kw) -> Path:
        return quantize(f32_gguf, out, qtype, llama=self, **kw)

    def bench(self, gguf, **kw) -> dict:
        return bench(gguf, llama=self, **kw)


def find(cache=None) -> LlamaCpp | None:
    """The build in the cache, if complete (both tools, the converter, made with today's flags); builds nothing."""
    llama = LlamaCpp(cache_root(cache))
    ok = all(os.access(p, os.X_OK) for p in (llama.llama_bench, llama.llama_quantize)) and llama.converter.is_file()
    return llama if ok and llama.info.get("cmake_flags") == cmake_flags() else None


def _tail(text: str, pattern: str = r"error|Error|ERROR|fatal|No matching|Could not|Failed", last: bool = False) -> str:
    """The most telling line of a tool's output: the first (``last``: the last) matching one, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in lines if re.search(pattern, ln)]
    return (hits[-1 if last else 0] if hits else lines[-1] if lines else "(no output)")[:300]


def _nice() -> list[str]:
    return ["nice", "-n", "10"] if shutil.which("nice") else []


def find_or_build(cache=None, build: bool = True, jobs: int = 2, log: Log = _stderr) -> LlamaCpp | None:
    """The cached build, or build it (``build=True``); None with a one-line reason when there is none.

    Steps, each skipped when its result is already in the cache: ``pip download`` the sdist (no binary,
    no dependencies), extract it, cmake configure, build only ``llama-bench`` and ``llama-quantize``
    under ``nice -n 10`` with ``jobs`` jobs. A lock file keeps two builds from racing in one cache.
    """
    found = find(cache)
    if found or not build:
        if not found:
            log(f"[llama.cpp] no build in {cache_root(cache)} (and build=False)")
        return found
    root = cache_root(cache)
    cmake, cxx = shutil.which("cmake"), shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cmake or not cxx:
        log(f"[llama.cpp] cannot build: {'cmake' if not cmake else 'a C++ compiler'} not found on PATH")
        return None
    root.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building: wait, then reuse what it built
        if found := find(cache):
            return found
        try:
            return _build(root, cmake, jobs, log)
        except (OSError, subprocess.SubprocessError) as error:
            log(f"[llama.cpp] build failed: {type(error).__name__}: {error}"[:300])
            return None


def _run_logged(cmd: list[str], log_file: Path, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    with open(log_file, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=cwd)


def _build(root: Path, cmake: str, jobs: int, log: Log) -> LlamaCpp | None:
    started = time.perf_counter()
    sdist_dir, src_parent, build_dir, log_file = root / "sdist", root / "src", root / "build", root / "build.log"
    sdists = sorted(sdist_dir.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    if not sdists:
        log(f"[llama.cpp] downloading the llama-cpp-python {VERSION} sdist from PyPI ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
               f"llama-cpp-python=={VERSION}", "-d", str(sdist_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        sdists = sorted(sdist_dir.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
        if done.returncode or not sdists:
            log(f"[llama.cpp] cannot download the sdist (pip rc {done.returncode}): {_tail(done.stderr + done.stdout)}")
            return None
    llama = LlamaCpp(root)
    if not llama.converter.is_file():
        log(f"[llama.cpp] extracting {sdists[0].name} ...")
        partial = root / "src.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(sdists[0]) as tar:
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(partial, **kw)
        (top,) = [p for p in partial.iterdir() if p.is_dir()]  # llama_cpp_python-<version>/
        shutil.rmtree(src_parent, ignore_errors=True)
        top.rename(src_parent)
        shutil.rmtree(partial, ignore_errors=True)
    flags, stamp = cmake_flags(), build_dir / "edge-tailor-flags.json"
    if not (build_dir / "CMakeCache.txt").is_file() or not stamp.is_file() or json.loads(stamp.read_text()) != flags:
        log("[llama.cpp] configuring ...")
        done = _run_logged([cmake, "-S", str(llama.src), "-B", str(build_dir), *flags], log_file, 600)
        if done.returncode:
            log(f"[llama.cpp] cmake configure failed (rc {done.returncode}): {_tail(log_file.read_text())}; "
                f"log {log_file}")
            return None
        stamp.write_text(json.dumps(flags))
    log(f"[llama.cpp] building {', '.join(TARGETS)} with {jobs} jobs (tens of minutes on 2 cores) ...")
    done = _run_logged([*_nice(), cmake, "--build", str(build_dir), "--target", *TARGETS, "-j", str(jobs)],
                       log_file, 4 * 3600)
    if done.returncode or not all(os.access(p, os.X_OK) for p in (llama.llama_bench, llama.llama_quantize)):
        log(f"[llama.cpp] build failed (rc {done.returncode}): {_tail(log_file.read_text())}; log {log_file}")
        return None
    info = {"version": VERSION, "cmake_flags": flags, "targets": list(TARGETS), "jobs": jobs,
            "build_seconds": round(time.perf_counter() - started, 1),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **cpu_info()}
    (root / "build.json").write_text(json.dumps(info, indent=1))
    log(f"[llama.cpp] built in {info['build_seconds']:.0f} s: {llama.bin}")
    return llama


def _require(llama: LlamaCpp | None) -> LlamaCpp:
    llama = llama or find()
    if llama is None:
        raise RuntimeError(f"no llama.cpp build in {cache_root()}: run find_or_build() first")
    return llama


# --- conversion and quantization ----------------------------------------------------------------------

# Runs the vendored converter; with a fallback BPE pre-tokenizer name, that name is used only when the
# converter does not recognize the tokenizer's hash (it raises NotImplementedError otherwise).
_CONVERT_WRAPPER = """
import runpy, sys
script, fallback = sys.argv[1], sys.argv[2]
sys.path.insert(0, str(__import__('pathlib').Path(script).parent))
if fallback:
    from conversion import base
    original = base.TextModel.get_vocab_base_pre
    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            base.logger.warning("BPE pre-tokenizer not recognized: using %r (edge-tailor fallback)", fallback)
            return fallback
    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def convert_command(llama: LlamaCpp, hf_folder, out, outtype: str = "f32", bpe_pre: str | None = None) -> list[str]:
    args = [str(Path(hf_folder)), "--outfile", str(Path(out)), "--outtype", outtype.lower()]
    if bpe_pre:
        return [sys.executable, "-c", _CONVERT_WRAPPER, str(llama.converter), bpe_pre, *args]
    return [sys.executable, str(llama.converter), *args]


def _ensure_sentencepiece(llama: LlamaCpp) -> None:
    """The converter imports sentencepiece before it looks for tokenizer.model: installed into the cache."""
    if (llama.pydeps / "sentencepiece").is_dir():
        return
    with contextlib.suppress(ImportError):
        import sentencepiece  # noqa: F401  (already in this environment)
        return
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(llama.pydeps),
                           SENTENCEPIECE], capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"cannot install {SENTENCEPIECE} into {llama.pydeps}: {_tail(done.stderr + done.stdout)}")


def to_gguf(hf_folder, out, outtype: str = "f32", *, llama: LlamaCpp | None = None, bpe_pre: str | None = None,
            timeout: float = 3600) -> Path:
    """Convert a Hugging Face folder (config.json + safetensors + tokenizer) to a GGUF file.

    ``bpe_pre``: the llama.cpp pre-tokenizer name to use when the converter refuses the tokenizer
    ("BPE pre-tokenizer was not recognized"), e.g. ``DIGITS_GPT2`` for the embedded student's.
    """
    llama = _require(llama)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _ensure_sentencepiece(llama)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(llama.pydeps), os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("NO_LOCAL_GGUF", None)  # the vendored gguf-py matches the converter; the pinned gguf may not
    partial = out.with_name(out.name + ".partial")
    cmd = convert_command(llama, hf_folder, partial, outtype, bpe_pre)
    done = subprocess.run([*_nice(), *cmd], capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode or not partial.is_file():
        partial.unlink(missing_ok=True)
        why = _tail(done.stderr + done.stdout, r"^[A-Za-z.]*(Error|Exception)\b|not supported", last=True)
        raise RuntimeError(f"convert_hf_to_gguf failed (rc {done.returncode}): {why}")
    partial.replace(out)
    return out


def quantize_command(llama: LlamaCpp, f32_gguf, out, qtype: str = "Q8_0", threads: int | None = None) -> list[str]:
    if qtype.upper() not in QTYPES:
        raise ValueError(f"unknown quantization type {qtype!r}; choose from {', '.join(QTYPES)}")
    return [str(llama.llama_quantize), str(Path(f32_gguf)), str(Path(out)), qtype.upper(),
            *([str(threads)] if threads else [])]


def quantize(f32_gguf, out, qtype: str = "Q8_0", *, llama: LlamaCpp | None = None, threads: int | None = 2,
             timeout: float = 3600) -> Path:
    """``llama-quantize f32_gguf out QTYPE [threads]``; the output head is quantized as llama-quantize chooses."""
    llama = _require(llama)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([*_nice(), *quantize_command(llama, f32_gguf, out, qtype, threads)],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode or not out.is_file():
        raise RuntimeError(f"llama-quantize {qtype} failed (rc {done.returncode}): {_tail(done.stderr + done.stdout)}")
    return out


# --- benchmark -----------------------------------------------------------------------------------

def bench_command(llama: LlamaCpp, gguf, threads: int = 2, prompt_tokens: int = 64, new_tokens: int = 32,
                  repeats: int = 5, depth: int = 0) -> list[str]:
    return [str(llama.llama_bench), "-m", str(Path(gguf)), "-t", str(threads), "-p", str(prompt_tokens),
            "-n", str(new_tokens), "-r", str(repeats), *(["-d", str(depth)] if depth else []), "-o", "json"]


def parse_bench(text: str) -> dict:
    """llama-bench ``-o json`` (a list of tests) -> ms per generated token and prompt tokens/s.

    The tg test (``n_prompt == 0``, ``n_gen > 0``) gives ms/token = 1000 / mean tokens/s; its spread is
    from the standard deviation of tokens/s. The pp test (``n_gen == 0``) gives the prompt rate.
    """
    start = text.find("[")  # tolerate anything llama-bench or the shell printed before the JSON
    tests = json.loads(text[start:] if start >= 0 else text)
    tg = [t for t in tests if t.get("n_gen", 0) > 0 and t.get("n_prompt", 0) == 0]
    pp = [t for t in tests if t.get("n_prompt", 0) > 0 and t.get("n_gen", 0) == 0]
    if not tg:
        raise ValueError("llama-bench output has no token-generation (tg) test")
    g = tg[0]
    ts, sd = float(g["avg_ts"]), float(g.get("stddev_ts", 0.0))
    out = {"ms_per_token": round(1000.0 / ts, 4), "tokens_per_s": round(ts, 2), "tokens_per_s_stddev": round(sd, 2),
           # the mean time per run / n_gen: >= the figure above (a mean of rates weights fast runs up)
           "ms_per_token_mean_time": round(g["avg_ns"] / 1e6 / g["n_gen"], 4) if "avg_ns" in g else None,
           # the median run: what a shared box's one-off stalls (a descheduled thread: 100+ ms) leave alone
           "ms_per_token_median": round(statistics.median(g["samples_ns"]) / 1e6 / g["n_gen"], 4)
           if g.get("samples_ns") else None,
           "ms_per_token_range": [round(1000.0 / (ts + sd), 4), round(1000.0 / (ts - sd), 4) if ts > sd else None],
           "new_tokens": g["n_gen"], "depth": g.get("n_depth", 0), "threads": g.get("n_threads"),
           "repeats": len(g.get("samples_ts") or []) or None,
           "model_type": g.get("model_type"),
           "model_mb": round(g["model_size"] / 1e6, 2) if "model_size" in g else None,
           "parameters": g.get("model_n_params"), "cpu_info": g.get("cpu_info"),
           "build_commit": g.get("build_commit"), "build_number": g.get("build_number"), "backends": g.get("backends")}
    if pp:
        out.update({"prompt_tokens": pp[0]["n_prompt"], "prompt_tokens_per_s": round(float(pp[0]["avg_ts"]), 1),
                    "prompt_tokens_per_s_stddev": round(float(pp[0].get("stddev_ts", 0.0)), 1)})
    return out


def bench(gguf, threads: int = 2, prompt_tokens: int = 64, new_tokens: int = 32, repeats: int = 5, *,
          depth: int = 0, llama: LlamaCpp | None = None, timeout: float = 1800) -> dict:
    """Run ``llama-bench -m gguf -t threads -p prompt_tokens -n new_tokens -r repeats -o json`` and parse it."""
    llama = _require(llama)
    cmd = bench_command(llama, gguf, threads, prompt_tokens, new_tokens, repeats, depth)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"llama-bench failed (rc {done.returncode}): {_tail(done.stderr + done.stdout)}")
    result = parse_bench(done.stdout)
    result["command"] = " ".join(cmd)
    return result


# --- the machine ---------------------------------------------------------------------------------

def cpu_info() -> dict:
    """CPU model, the int8 dot-product extensions ggml can use, cores and the load average now."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            model = m.group(1).strip()
        flags = set(re.findall(r"\b(avx512_vnni|avx_vnni|amx_int8|avx512f|avx2)\b", text))
    return {"cpu": model, "cpu_flags": sorted(flags), "cores": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


# --- the command line: the table for the embedded student and SmolLM2 ------------------------------

def find_smollm2(models: Path | None = None) -> Path | None:
    """A SmolLM2 Hugging Face folder (config.json + model.safetensors) in the toolkit's model cache.

    That cache is ``edge_tailor.gguf_cache.cache_root()``: ``$EDGE_TAILOR_CACHE`` itself when set (not
    ``$EDGE_TAILOR_CACHE/models``), else ``~/.cache/edge-tailor/models``.
    """
    if models is None:
        from edge_tailor.gguf_cache import cache_root as models_root

        models = models_root()
    if not models.is_dir():
        return None
    for d in sorted(models.iterdir()):
        # ".tmp-SmolLM2...-": gguf_cache's folder being written (renamed into place when whole)
        if d.is_dir() and not d.name.startswith(".") and "smollm2" in d.name.lower() \
                and (d / "config.json").is_file() and (d / "model.safetensors").is_file():
            return d
    return None


def _measure(llama: LlamaCpp, name: str, hf: Path, work: Path, qtypes: list[str], bpe_pre: str | None,
             args, log: Log) -> list[dict]:
    rows = []
    f32 = work / f"{name}-f32.gguf"
    if not f32.is_file():
        log(f"[llama.cpp] converting {hf} -> {f32.name} ...")
        llama.to_gguf(hf, f32, "f32", bpe_pre=bpe_pre)
    for qtype in ["F32", *qtypes]:
        path = f32 if qtype == "F32" else work / f"{name}-{qtype.lower()}.gguf"
        if not path.is_file():
            log(f"[llama.cpp] quantizing {name} to {qtype} ...")
            llama.quantize(f32, path, qtype)
        log(f"[llama.cpp] benching {path.name} ...")
        before = [round(x, 2) for x in os.getloadavg()]
        r = llama.bench(path, threads=args.threads, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                        repeats=args.repeats, depth=args.depth)
        rows.append({"model": name, "engine": f"llama.cpp {qtype}", "file": str(path), "loadavg_before": before,
                     "loadavg_after": [round(x, 2) for x in os.getloadavg()], **r})
    return rows


def markdown(rows: list[dict], machine: dict) -> str:
    lines = [f"CPU: {machine['cpu']} ({', '.join(machine['cpu_flags']) or 'no vnni/amx'}), {machine['cores']} cores; "
             f"load average {machine['loadavg_before']} before / {machine['loadavg_after']} after.", "",
             "ms/token = 1000 / llama-bench's mean tokens/s (tg test); median: the median run's time / tokens.", "",
             "| model | engine | ms/token | median ms/token | tokens/s (sd) | prompt tok/s | threads | file MB "
             "| load before -> after |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['engine']} | {r['ms_per_token']:.3f} | {r['ms_per_token_median']:.3f} "
                     f"| {r['tokens_per_s']:.1f} "
                     f"({r['tokens_per_s_stddev']:.1f}) | {r.get('prompt_tokens_per_s', float('nan')):.0f} | "
                     f"{r['threads']} | {r['model_mb']} | {r['loadavg_before'][0]} -> {r['loadavg_after'][0]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llama.cpp decode latency (llama-bench) on the project's weights.")
    parser.add_argument("--out", type=Path, default=Path("runs/llamacpp"), help="GGUF files and results")
    parser.add_argument("--no-build", action="store_true", help="use a cached build only")
    parser.add_argument("--models", default="student,smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=0, help="llama-bench -d: tg after this many context tokens")
    parser.add_argument("--wait-smollm2", type=int, default=0, help="seconds to wait for the SmolLM2 folder")
    parser.add_argument("--smollm2", type=Path, default=None, help="the SmolLM2 HF folder (default: the model cache)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    machine = cpu_info()
    machine["loadavg_before"] = machine.pop("loadavg")
    llama = find_or_build(build=not args.no_build)
    if llama is None:
        print("llama.cpp: not available (see the reason above); nothing measured")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    rows, failures = [], {}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "student" in models:
        from edge_tailor.models import resolve_model_path

        try:  # tokenizer irrelevant to llama-bench (random ids); the fallback only names its pre-tokenizer
            rows += _measure(llama, "student", Path(resolve_model_path("embedded:student")), args.out, ["Q8_0", "Q4_0"],
                             DIGITS_GPT2, args, _stderr)
        except RuntimeError as error:
            failures["student"] = str(error)
    if "smollm2" in models:
        hf, waited = args.smollm2 or find_smollm2(), 0
        while hf is None and waited < args.wait_smollm2:
            _stderr(f"[llama.cpp] no SmolLM2 folder in the model cache yet; waiting ({waited} s so far) ...")
            time.sleep(60)
            waited += 60
            hf = find_smollm2()
        if hf is None:
            failures["smollm2"] = "no SmolLM2 folder (config.json + model.safetensors) in the model cache"
        else:
            try:
                rows += _measure(llama, "SmolLM2-135M", hf, args.out, ["Q8_0", "Q4_0"], "smollm", args, _stderr)
            except RuntimeError as error:
                failures["smollm2"] = str(error)
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
              "llama_cpp": {"pypi": f"llama-cpp-python=={VERSION}", **llama.info}, "results": rows,
              "failures": failures}
    (args.out / "llamacpp.json").write_text(json.dumps(report, indent=1))
    table = markdown(rows, machine)
    (args.out / "llamacpp.md").write_text(table)
    print(table)
    for name, why in failures.items():
        print(f"failed: {name}: {why}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
