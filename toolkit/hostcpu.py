"""Which ONNX Runtime integer kernel this CPU runs, and whether a target's INT8 scheme is exact on it.

ONNX Runtime's MLAS picks its u8 x s8 GEMM kernel from CPUID at start-up. On x86 without a VNNI
instruction (AVX2, or AVX512 without VNNI) it multiplies with VPMADDUBSW, which adds two u8 x s8
products into a signed 16-bit lane and saturates: 255 x 127 x 2 = 64770 does not fit, so full-range
8-bit weights give other numbers there than QAT simulated. 7-bit weights (``reduce_range``, qmax 64:
255 x 64 x 2 = 32640) never saturate. VNNI (AVX512-VNNI, AVX-VNNI) and AMX accumulate in 32 bits;
arm64 kernels widen before they add (UMULL/UADALP, or UDOT/SDOT into 32 bits). So:

    host = detect()                       # HostCPU(arch, model, kernel, flags)
    exactness(target, host)               # Exactness(exact_on_host, same_kernel, note)

CPUID is read directly (ctypes) because ``/proc/cpuinfo`` can list features the process cannot use
(under an emulator it shows the host's flags), numpy's own CPUID table has no AVX-VNNI or AMX, and no
small, maintained library reports both; a feature counts when CPUID reports it and, where the kernel
publishes ``/proc/cpuinfo``, the kernel lists it too (it drops features the OS does not enable).
"""

from __future__ import annotations

import ctypes
import mmap
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

# u8 x s8 kernels that add products in 32 bits (no saturation), best first
NON_SATURATING = ("amx", "avx512_vnni", "avx_vnni")
X86_KERNELS = ("amx", "avx512_vnni", "avx_vnni", "avx512", "avx2", "sse")
ARM_KERNELS = ("i8mm", "dotprod", "neon")
ISA_ARCH = {**{k: "x86_64" for k in X86_KERNELS}, **{k: "arm64" for k in ARM_KERNELS}}


@dataclass(frozen=True)
class HostCPU:
    arch: str  # "x86_64" or "arm64" (aarch64)
    model: str  # as the OS names it, for reports
    kernel: str  # the best integer-GEMM kernel class ONNX Runtime can use here (X86_KERNELS / ARM_KERNELS)
    flags: tuple[str, ...] = field(default=())  # the features behind that choice

    def describe(self) -> str:
        return f"{self.model} ({self.arch}; {', '.join(self.flags) or 'no SIMD integer extensions found'})"


# Machine code for cpuid(leaf, subleaf, out): System V arguments in edi, esi, rdx; out = uint32[4].
_CPUID_CODE = bytes([
    0x53,                    # push rbx (callee-saved, cpuid writes it)
    0x49, 0x89, 0xD0,        # mov r8, rdx
    0x89, 0xF8,              # mov eax, edi
    0x89, 0xF1,              # mov ecx, esi
    0x0F, 0xA2,              # cpuid
    0x41, 0x89, 0x00,        # mov [r8], eax
    0x41, 0x89, 0x58, 0x04,  # mov [r8+4], ebx
    0x41, 0x89, 0x48, 0x08,  # mov [r8+8], ecx
    0x41, 0x89, 0x50, 0x0C,  # mov [r8+12], edx
    0x5B,                    # pop rbx
    0xC3,                    # ret
])


def _cpuid_x86() -> set[str] | None:
    """Integer-SIMD features from CPUID leaf 7, or None where executable memory is refused."""
    try:
        buf = mmap.mmap(-1, len(_CPUID_CODE), prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    buf.write(_CPUID_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)(address)
    out = (ctypes.c_uint32 * 4)()

    def cpuid(leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
        fn(leaf, sub, ctypes.addressof(out))
        return tuple(out)

    max_leaf = cpuid(0)[0]
    found = set()
    if max_leaf >= 7:
        _, ebx, ecx, edx = cpuid(7, 0)
        bits = {"avx2": (ebx, 5), "avx512f": (ebx, 16), "avx512bw": (ebx, 30), "avx512_vnni": (ecx, 11),
                "amx_int8": (edx, 25), "amx_tile": (edx, 24)}
        found |= {name for name, (reg, bit) in bits.items() if reg >> bit & 1}
        if cpuid(7, 0)[0] >= 1 and cpuid(7, 1)[0] >> 4 & 1:
            found.add("avx_vnni")
    buf.close()
    return found


def _proc_cpuinfo() -> tuple[str, set[str]] | None:
    path = Path("/proc/cpuinfo")
    try:
        text = path.read_text()
    except OSError:
        return None
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _x86_kernel(flags: set[str]) -> str:
    if {"amx_int8", "amx_tile"} <= flags:
        return "amx"
    if {"avx512_vnni", "avx512bw"} <= flags:
        return "avx512_vnni"
    if "avx_vnni" in flags:
        return "avx_vnni"
    if "avx512bw" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "sse"


@lru_cache(maxsize=1)
def detect() -> HostCPU:
    """This machine's CPU and the integer kernel class ONNX Runtime will pick on it."""
    machine = platform.machine().lower()
    info = _proc_cpuinfo()
    model, listed = info if info else (platform.processor() or machine, None)
    if machine in ("x86_64", "amd64"):
        cpuid = _cpuid_x86() if machine == "x86_64" else None
        if cpuid is None and listed is None:
            flags: set[str] = set()
        elif cpuid is None or listed is None:
            flags = cpuid if cpuid is not None else listed  # type: ignore[assignment]
        else:
            flags = cpuid & listed
        relevant = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
        return HostCPU("x86_64", model or "x86-64 CPU", _x86_kernel(flags), tuple(f for f in relevant if f in flags))
    if machine in ("aarch64", "arm64"):
        flags = listed or set()
        kernel = "i8mm" if "i8mm" in flags else "dotprod" if "asimddp" in flags else "neon"
        return HostCPU("arm64", model or "arm64 CPU", kernel, tuple(f for f in ("asimddp", "i8mm") if f in flags))
    return HostCPU(machine, model or machine, "unknown")


def scheme_exact_on(quant, arch: str, kernel: str) -> bool:
    """Whether a ``[quant]`` block's integer products are computed exactly by ``kernel``.

    Weight-only MatMulNBits (int8 compute: s8 x s8 or s8 x s4 under the int16 limit) and u8 x u8 are
    exact everywhere; u8 x s8 with full-range weights needs a kernel that accumulates in 32 bits.
    """
    weight_only = quant.activations.dtype == "none" or quant.weights.dtype == "int4"
    if weight_only or quant.weights.dtype == "uint8" or quant.reduce_range or arch == "arm64":
        return True
    return kernel in NON_SATURATING


@dataclass(frozen=True)
class Exactness:
    exact_on_host: bool  # the host computes this scheme's integer products without saturation
    same_arch: bool  # the host runs the same family of kernels as the device
    same_kernel: bool  # the host's kernel class is the device's
    note: str  # one line for the terminal and the report

    def as_dict(self, host: HostCPU, target) -> dict:
        return {"host_cpu": host.model, "host_arch": host.arch, "host_kernel": host.kernel, "host_flags": list(host.flags),
                "target": target.name, "target_isa": target.target.isa, "exact_on_host": self.exact_on_host,
                "same_arch": self.same_arch, "same_kernel": self.same_kernel, "note": self.note}


def exactness(target, host: HostCPU | None = None) -> Exactness:
    """How far figures measured on ``host`` speak for ``target``'s device, in one line."""
    host = host or detect()
    isa, arch = target.target.isa, target.target.arch
    same_arch = host.arch == arch
    exact = same_arch and scheme_exact_on(target.quant, host.arch, host.kernel)
    scheme = "reduce_range on" if target.quant.reduce_range else "full-range 8-bit weights"
    if not same_arch:
        note = (f"host {host.arch} ({host.model}) runs other kernels than target {target.name} ({arch}, {isa}): "
                "INT8 accuracy and latency measured here are not the device's")
    elif not exact:
        note = (f"host kernel {host.kernel} saturates u8 x s8 products; target {target.name}'s INT8 scheme "
                f"({scheme}) is exact only on {'/'.join(NON_SATURATING)}: INT8 accuracy and parity measured here "
                "are not the device's")
    elif host.kernel != isa:
        note = (f"host kernel {host.kernel}, target {target.name} is {isa}: its INT8 scheme ({scheme}) is exact "
                "on both, so integer results match the device's (latency does not)")
    else:
        note = f"host kernel {host.kernel} = target {target.name}'s: INT8 numerics and kernels are the device's"
    return Exactness(exact, same_arch, same_arch and host.kernel == isa, note)


def kernel_record(target, host: HostCPU | None = None) -> dict:
    """What a stage records about the CPU its INT8 figures were measured on (report.json ``kernel``)."""
    host = host or detect()
    return exactness(target, host).as_dict(host, target)


def kernel_line(target, host: HostCPU | None = None) -> str:
    """The one line `run`, `bench`, `verify` and `gate` print about this host against the target."""
    host = host or detect()
    check = exactness(target, host)
    lead = "INT8 kernel" if check.exact_on_host and check.same_arch else "WARNING: INT8 kernel differs from the device's"
    return f"{lead}: {host.model}, {check.note}"
