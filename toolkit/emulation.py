"""A bundle checked on its target's instruction set without the device: user-mode emulation (qemu-user).

ONNX Runtime picks its integer kernels by the CPU it finds, so a file whose fidelity was measured on this
host may compute something else on the device. `tailor verify --on-target` runs export/target_probe.py
(the bundle's own edge runtime, nothing of the toolkit) under the target's CPU and compares what it
computes with the fp32 reference:

- arm64 targets: `qemu-aarch64 -cpu <model>` in a Debian arm64 root, prepared once under the cache
  (debootstrap's first stage, its packages unpacked without configuring them: no chroot, no binfmt_misc)
  with aarch64 wheels of onnxruntime / numpy / tokenizers from PyPI, the host's versions;
- x86 targets: `qemu-x86_64 -cpu Haswell` for avx2; qemu's TCG emulates no AVX-512, so a VNNI / AMX target
  is checked natively where the host has that kernel and refused otherwise.

Why no library: no Python package runs an interpreter under qemu-user in a foreign root; the steps are
debootstrap's and pip's own, in order.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import EnvironmentFailure, InputError

DEBIAN_SUITE = "bookworm"  # python3.11, the interpreter the cp311 wheels below are for
DEBIAN_MIRROR = "http://deb.debian.org/debian"
RUNTIME_PACKAGES = ("onnxruntime", "numpy", "tokenizers")  # what edge_runtime.py imports
# qemu 7.2 CPU models per target isa. Its default arm64 CPU ("max") has SME, under which ONNX Runtime 1.32
# computes wrong logits (4 of 36 argmax right on the embedded bundle): a model is always named.
ARM_CPU = {"dotprod": "cortex-a76", "neon": "cortex-a72", "i8mm": "max,sve=off,sme=off"}
X86_CPU = {"avx2": "Haswell", "sse": "Nehalem"}
# onnxruntime's bundled cpuinfo reads /proc/cpuinfo at import; qemu-user shows it the x86 host's and it
# crashes (SIGSEGV). qemu's -L looks a path up in the root first, so the root gets a /proc of one file.
_FAKE_CPUINFO = """processor\t: {i}
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

"""


@dataclass(frozen=True)
class Emulator:
    name: str  # as reports show it: "qemu-aarch64 -cpu cortex-a76", or "native (host is avx512_vnni)"
    prefix: tuple[str, ...]  # the command before the interpreter's own arguments
    env: dict[str, str]


def emulation_cache() -> Path:
    """Where the emulated roots live: $EDGE_TAILOR_EMULATION, default ~/.cache/edge-tailor/emulation."""
    env = os.environ.get("EDGE_TAILOR_EMULATION", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-tailor" / "emulation"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if not found:
        raise EnvironmentFailure(name, f"not installed: it runs the bundle on its target's CPU (Debian/Ubuntu: "
                                 f"apt-get install {package})")
    return found


def emulator_for(target, host) -> Emulator:
    """How to run a program on `target`'s CPU from this `host` (edge_tailor.hostcpu.HostCPU)."""
    spec = target.target
    if spec.arch == "arm64":
        cpu = ARM_CPU.get(spec.isa)
        if cpu is None:
            raise InputError(target.name, "target.isa", f"no qemu CPU model for arm64 isa '{spec.isa}' "
                             f"(known: {', '.join(ARM_CPU)})")
        if host.arch == "arm64" and host.kernel == spec.isa:
            return Emulator(f"native (host is {host.kernel})", (), {})
        root, site = arm64_root()
        return Emulator(f"qemu-aarch64 -cpu {cpu}", (_tool("qemu-aarch64", "qemu-user"), "-cpu", cpu, "-L", str(root),
                                                      str(root / "usr" / "bin" / "python3")),
                        {"PYTHONPATH": str(site)})
    if host.arch != "x86_64":
        raise EnvironmentFailure(target.name, f"an x86 target is checked from an x86-64 host (this one is {host.arch})")
    if host.kernel == spec.isa:
        return Emulator(f"native (host is {host.kernel})", (sys.executable,), {})
    cpu = X86_CPU.get(spec.isa)
    if cpu is None:
        raise EnvironmentFailure(target.name, f"qemu's TCG emulates no AVX-512, so a '{spec.isa}' target is checked "
                                 f"only on a host with that kernel (this one: {host.kernel}); run `tailor verify "
                                 "--on-target` there")
    return Emulator(f"qemu-x86_64 -cpu {cpu}", (_tool("qemu-x86_64", "qemu-user"), "-cpu", cpu, sys.executable), {})


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in RUNTIME_PACKAGES}


def arm64_root() -> tuple[Path, Path]:
    """The Debian arm64 root and the aarch64 site-packages of this host's runtime versions, prepared once
    (a few minutes: debootstrap, pip) under the cache, atomically and under a lock."""
    cache = emulation_cache()
    cache.mkdir(parents=True, exist_ok=True)
    versions = _versions()
    root = cache / f"debian-{DEBIAN_SUITE}-arm64"
    site = cache / ("aarch64-site-" + "-".join(f"{k}{v}" for k, v in versions.items()))
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another `verify --on-target` may be preparing the same root
        if not (root / ".ready").is_file():
            _build_root(root)
        if not (site / ".ready").is_file():
            _build_site(site, versions)
    return root, site


def _run_step(command: list[str], what: str, log: Path, **kwargs) -> None:
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode:
        raise EnvironmentFailure(log, f"{what} failed (exit {done.returncode}); its output is in this file")


def _build_root(root: Path) -> None:
    debootstrap = _tool("debootstrap", "debootstrap")
    _tool("dpkg-deb", "dpkg")
    building = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    log = root.parent / f"{root.name}.log"
    try:
        _say(f"on-target check: preparing a Debian {DEBIAN_SUITE} arm64 root once, in {root} (about 2 min; log: {log})")
        _run_step([debootstrap, "--foreign", "--arch=arm64", "--variant=minbase",
                   "--include=python3,libgomp1", DEBIAN_SUITE, str(building), DEBIAN_MIRROR],
                  "debootstrap (arm64 first stage)", log)
        # the first stage leaves the packages as .debs; unpacked without configuring, binaries run under -L.
        # tar --keep-directory-symlink keeps bookworm's merged /usr (/lib -> usr/lib), which dpkg-deb -x replaces
        names = (building / "debootstrap" / "base").read_text().split()
        archives = building / "var" / "cache" / "apt" / "archives"
        for name in names:
            for deb in sorted(archives.glob(f"{name}_*.deb")):
                unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
                _run_step(["tar", "-C", str(building), "--keep-directory-symlink", "-xf", "-"], f"unpacking {deb.name}",
                          log, stdin=unpack.stdout)
                unpack.wait()
        shutil.rmtree(archives, ignore_errors=True)
        proc = building / "proc"
        if proc.is_symlink() or proc.is_file():
            proc.unlink()
        proc.mkdir(exist_ok=True)
        (proc / "cpuinfo").write_text("".join(_FAKE_CPUINFO.format(i=i) for i in range(os.cpu_count() or 1)))
        (building / ".ready").write_text(DEBIAN_SUITE)
        shutil.rmtree(root, ignore_errors=True)
        building.rename(root)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _build_site(site: Path, versions: dict[str, str]) -> None:
    building = Path(tempfile.mkdtemp(prefix=site.name + ".", dir=site.parent))
    log = site.parent / f"{site.name}.log"
    platform = ["--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
                "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:"]
    try:
        _say(f"on-target check: fetching aarch64 wheels of {', '.join(f'{k}=={v}' for k, v in versions.items())} "
             f"once, into {site} (log: {log})")
        _run_step([sys.executable, "-m", "pip", "install", "-q", *platform,
                   "--target", str(building), *(f"{k}=={v}" for k, v in versions.items())],
                  "pip install of the aarch64 wheels", log)
        (building / ".ready").write_text(json.dumps(versions))
        shutil.rmtree(site, ignore_errors=True)
        building.rename(site)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def run_probe(emulator: Emulator, bundle: Path, out_dir: Path, timeout_s: float = 3600) -> dict:
    """export/target_probe.py on the emulated CPU: the smoke decode's tokens and the counted positions'
    logits and argmax (numpy array under "logits")."""
    import numpy as np

    from .export import target_probe

    prefix = emulator.prefix or (sys.executable,)
    command = [*prefix, "-B", target_probe.__file__, str(bundle), str(out_dir)]
    env = {**os.environ, **emulator.env, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise EnvironmentFailure(bundle, f"the bundle did not run under {emulator.name} (exit {done.returncode}): "
                                 f"{tail}")
    probe = json.loads((out_dir / "probe.json").read_text(encoding="utf-8"))
    probe["logits"] = np.load(out_dir / "logits.npy")
    return probe


def fp32_reference_graph(bundle: Path) -> Path | None:
    """The run's fp32 ONNX export beside a bundle in its run directory (<run>/bundle, <run>/export/fp32)."""
    folder = bundle.resolve().parent / "export" / "fp32"
    return folder if (folder / "model.onnx").is_file() else None


def check_on_target(bundle: str | Path, fp32: str | Path | None = None, host=None) -> dict:
    """The bundle's greedy tokens, top-1 agreement and mean KL against the fp32 reference as computed on its
    target's CPU (emulated), with the budgets of its target.toml: ``passed`` False when one breaks there."""
    import numpy as np

    from .export.fidelity import kl_per_position, log_softmax
    from .export.runtime import EdgeModel
    from .hostcpu import detect
    from .target import load_target

    bundle = Path(bundle)
    target = load_target(bundle / "target.toml")
    host = host or detect()
    emulator = emulator_for(target, host)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    reference = json.loads((bundle / manifest["fidelity"]["file"]).read_text(encoding="utf-8"))
    starts = reference.get("decode_from") or [0] * len(reference["sequences"])
    _say(f"on-target check: {bundle} on {target.name} ({target.target.arch}, {target.target.isa}) under "
         f"{emulator.name}")
    with tempfile.TemporaryDirectory(prefix="edge-tailor-on-target-") as scratch:
        probe = run_probe(emulator, bundle, Path(scratch))
    expected = [row[start:] for row, start in zip(reference["fp32_top1"], starts)]
    hits = sum(a == b for got, want in zip(probe["argmax"], expected) for a, b in zip(got, want))
    positions = sum(len(row) for row in expected)
    result = {"isa": target.target.isa, "arch": target.target.arch, "emulator": emulator.name,
              "host": host.describe(), "positions": positions, "top1": round(hits / max(1, positions), 4),
              "tokens": probe["tokens"], "tokens_equal_host": probe["tokens"] == manifest["smoke"]["tokens"]["model.onnx"],
              "mean_kl": None, "fp32_graph": None}
    graph = Path(fp32) if fp32 else fp32_reference_graph(bundle)
    if graph is not None:  # fp32 arithmetic is the same on every ISA to rounding: computed here, on the host
        model = EdgeModel.load(graph, threads=1, verify=False)
        ref = np.concatenate([model.prefill_logits(seq)[start:len(seq)] for seq, start in
                              zip(reference["sequences"], starts)])
        result["mean_kl"] = round(float(kl_per_position(log_softmax(ref), log_softmax(probe["logits"])).mean()), 6)
        result["fp32_graph"] = str(graph)
    budgets = target.budgets
    checks = {}
    if budgets.max_top1_disagreement is not None:
        checks["max_top1_disagreement"] = {"limit": budgets.max_top1_disagreement,
                                           "measured": round(1 - result["top1"], 4)}
    if budgets.max_mean_kl is not None and result["mean_kl"] is not None:
        checks["max_mean_kl"] = {"limit": budgets.max_mean_kl, "measured": result["mean_kl"]}
    for check in checks.values():
        check["passed"] = check["measured"] <= check["limit"]
    result["budgets"] = checks
    result["passed"] = all(c["passed"] for c in checks.values())
    return result
