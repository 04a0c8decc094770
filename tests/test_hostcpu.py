"""Which integer kernel the host runs, and how far its INT8 figures speak for a target's device."""

import platform

import pytest

from edge_tailor.benchmarks.gate import check_budgets, kernel_summary
from edge_tailor.hostcpu import HostCPU, _cpuid_x86, _x86_kernel, detect, exactness, kernel_line, scheme_exact_on
from edge_tailor.target import load_target

AVX2_ONLY = HostCPU("x86_64", "AMD EPYC 7B12", "avx2", ("avx2",))
SKYLAKE_X = HostCPU("x86_64", "Intel Xeon Gold 6148", "avx512", ("avx2", "avx512bw"))
VNNI = HostCPU("x86_64", "Intel Xeon Platinum 8375C", "avx512_vnni", ("avx2", "avx512bw", "avx512_vnni"))
PI = HostCPU("arm64", "Cortex-A76", "dotprod", ("asimddp",))


@pytest.mark.parametrize(("flags", "kernel"), [
    ({"avx2"}, "avx2"), ({"avx2", "avx512bw"}, "avx512"), ({"avx2", "avx_vnni"}, "avx_vnni"),
    ({"avx2", "avx512bw", "avx512_vnni"}, "avx512_vnni"), ({"avx2", "avx512bw", "avx512_vnni", "amx_int8", "amx_tile"}, "amx"),
    ({"sse4_2"}, "sse"),
])
def test_kernel_class_from_flags(flags, kernel):
    assert _x86_kernel(flags) == kernel


@pytest.mark.skipif(platform.machine() != "x86_64", reason="CPUID is an x86 instruction")
def test_cpuid_agrees_with_numpys_own_cpuid():
    """Both read CPUID (numpy for its dispatch), so they agree even under an emulator whose /proc/cpuinfo lies."""
    from numpy._core._multiarray_umath import __cpu_features__ as numpy_features

    found = _cpuid_x86()
    assert found is not None
    assert ("avx2" in found) == numpy_features["AVX2"]
    assert ("avx512_vnni" in found) == numpy_features["AVX512VNNI"]
    assert ("avx512bw" in found) == numpy_features["AVX512BW"]
    assert detect().kernel == _x86_kernel(set(detect().flags) | ({"amx_tile"} if "amx_int8" in detect().flags else set()))


@pytest.mark.parametrize(("host", "target", "exact"), [
    (AVX2_ONLY, "ci-x86", True), (SKYLAKE_X, "ci-x86", True), (VNNI, "ci-x86", True),
    (AVX2_ONLY, "x86-avx2-ipc", True),
    (AVX2_ONLY, "x86-avx512-vnni", False), (SKYLAKE_X, "x86-avx512-vnni", False), (VNNI, "x86-avx512-vnni", True),
])
def test_scheme_exactness_by_kernel(host, target, exact):
    t = load_target(target)
    assert scheme_exact_on(t.quant, host.arch, host.kernel) is exact
    check = exactness(t, host)
    assert check.exact_on_host is exact and check.same_arch
    assert ("saturates" in check.note) is (not exact)


def test_weight_only_blocks_are_exact_everywhere():
    arm = load_target("arm64-a76")  # its 4-bit file is MatMulNBits; its INT8 file u8 x s8 on arm64
    assert scheme_exact_on(arm.quant, "arm64", "neon")


def test_notes_say_what_a_figure_means():
    ci, vnni, arm = load_target("ci-x86"), load_target("x86-avx512-vnni"), load_target("arm64-a76")
    assert "exact on both" in exactness(ci, VNNI).note and not exactness(ci, VNNI).same_kernel
    assert exactness(ci, AVX2_ONLY).same_kernel and "the device's" in exactness(ci, AVX2_ONLY).note
    assert kernel_line(vnni, AVX2_ONLY).startswith("WARNING: INT8 kernel differs from the device's: AMD EPYC 7B12")
    wrong_arch = exactness(arm, VNNI)
    assert not wrong_arch.same_arch and not wrong_arch.exact_on_host and "not the device's" in wrong_arch.note
    assert exactness(ci, PI).note.startswith("host arm64")


def test_gate_marks_accuracy_measured_on_another_kernel():
    vnni = load_target("x86-avx512-vnni")
    report = {"target": vnni.name, "accuracy": {"student_fp32": 0.5, "student_int8": 0.49},
              "fidelity": {"top1_agreement": 0.99, "mean_kl": 0.001},
              "latency": {"ms_per_token_p50": 1, "ms_per_token_p95": 1, "ttft_ms": 1, "peak_rss_mb": 1, "model_mb": 1}}
    from edge_tailor.hostcpu import kernel_record

    report["kernel"] = kernel_record(vnni, AVX2_ONLY)
    checked = check_budgets(report, vnni)
    for name in ("max_accuracy_drop", "max_top1_disagreement", "max_mean_kl"):
        assert checked[name]["measured_on"] == "host kernel avx2, not the device's"
    assert "measured_on" not in checked["ms_per_token_p50"]
    assert kernel_summary(report).startswith("WARNING: INT8 figures measured on a kernel other than the device's")
    report["kernel"] = kernel_record(vnni, VNNI)
    assert "measured_on" not in check_budgets(report, vnni)["max_accuracy_drop"]
    assert kernel_summary({}).startswith("INT8 kernel: not recorded")
