"""Bundles decoded on their target's instruction set without the device (`tailor verify --on-target`):
the embedded default's bundle for ci-x86 under `qemu-x86_64 -cpu Haswell` (AVX2, no VNNI) and for
arm64-a76 under `qemu-aarch64 -cpu cortex-a76` in a Debian arm64 root (edge_tailor.emulation).

Tier `-m emulated` (.ci/run installs qemu-user and debootstrap first); a machine where qemu cannot be
installed skips it, saying why.
"""

import json
import shutil

import pytest

from edge_tailor.cli import main
from small_runs import overrides

pytestmark = [pytest.mark.emulated, pytest.mark.slow]
NEEDED = ("qemu-x86_64", "qemu-aarch64", "debootstrap", "dpkg-deb")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed here: {', '.join(missing)} (apt-get install qemu-user debootstrap)")
    out = tmp_path_factory.mktemp("runs")
    found = {}
    # one run directory: the second target redoes only the stages that read the target
    for target in ("ci-x86", "arm64-a76"):
        assert main(["run", "--out", str(out), "--target", target, *overrides("emu", distill__ablation_seeds=0)]) \
            in (0, 1)
        kept = out / f"kept-{target}"
        for part in ("bundle", "export/fp32", "report.json"):
            (kept / part).parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if (out / "emu" / part).is_dir() else shutil.copy2
            copy(out / "emu" / part, kept / part)
        found[target] = kept
    return found


def _on_target(bundle, capsys) -> tuple[int, dict]:
    code = main(["verify", str(bundle), "--on-target"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('{"on_target"')]
    return code, json.loads(lines[-1])["on_target"]


def test_ci_x86_bundle_on_haswell_computes_what_the_host_measured(bundles, capsys):
    from edge_tailor.hostcpu import detect

    code, seen = _on_target(bundles["ci-x86"] / "bundle", capsys)
    host = json.loads((bundles["ci-x86"] / "report.json").read_text())["fidelity"]
    # an AVX2 host is the target's ISA itself and runs it natively
    want = "native (host is avx2)" if detect().kernel == "avx2" else "qemu-x86_64 -cpu Haswell"
    assert seen["emulator"] == want and seen["isa"] == "avx2"
    # reduce_range keeps ci-x86's u8 x s8 products from saturating AVX2's 16-bit adds: exact on every x86 kernel,
    # so the emulated AVX2 CPU computes the host's figures to the last digit
    assert seen["tokens_equal_host"] and seen["top1"] == host["top1_agreement"]
    assert seen["mean_kl"] == pytest.approx(host["mean_kl"], abs=1e-5)
    assert code == (0 if seen["passed"] else 1) and seen["passed"]


def test_arm64_bundle_on_an_emulated_cortex_a76_holds_its_budgets(bundles, capsys):
    code, seen = _on_target(bundles["arm64-a76"] / "bundle", capsys)
    assert seen["emulator"] == "qemu-aarch64 -cpu cortex-a76" and seen["arch"] == "arm64"
    assert seen["positions"] > 0 and seen["mean_kl"] is not None
    assert seen["budgets"]["max_top1_disagreement"]["passed"] and seen["budgets"]["max_mean_kl"]["passed"]
    assert code == 0
    from edge_tailor.hostcpu import exactness
    from edge_tailor.target import load_target

    if exactness(load_target("arm64-a76")).exact_on_host:  # a VNNI / AMX host computes the arm64 scheme exactly too
        assert seen["tokens_equal_host"]


def test_a_target_qemu_cannot_emulate_is_refused_with_the_reason(bundles):
    from edge_tailor.emulation import emulator_for
    from edge_tailor.errors import EnvironmentFailure
    from edge_tailor.hostcpu import HostCPU
    from edge_tailor.target import load_target

    avx2_host = HostCPU("x86_64", "an AVX2 machine", "avx2", ("avx2",))
    with pytest.raises(EnvironmentFailure, match="emulates no AVX-512"):
        emulator_for(load_target("x86-avx512-vnni"), avx2_host)
