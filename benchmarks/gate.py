"""The budget gate: compare a run's measured figures with its target's budgets.

Exit codes (DESIGN.md): 0 every budget held, 1 a budget broken, 2 bad input (a missing or
malformed report, an unknown target, a figure the report lacks).
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_tailor.errors import InputError
from edge_tailor.target import Target, load_target

REQUIRED = {"target": str, "accuracy": dict, "latency": dict}


def measured_value(report: dict, budget: str, source: str = "report.json") -> float:
    """The figure a budget limits, taken from report.json."""
    acc, lat = report["accuracy"], report["latency"]
    try:
        if budget == "max_accuracy_drop":
            return round(float(acc["student_fp32"]) - float(acc["student_int8"]), 4)
        if budget == "max_top1_disagreement":
            return round(1 - float(report["fidelity"]["top1_agreement"]), 4)
        if budget == "max_mean_kl":
            return round(float(report["fidelity"]["mean_kl"]), 5)
        if budget == "ms_per_token_vs_torch_fp32":
            ref = lat["reference"]  # both measured interleaved in one process
            return round(float(ref["edge_ms_per_token_p50"]) / float(ref["torch_fp32_ms_per_token_p50"]), 4)
        return float(lat[budget])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(source, f"the figure for budget '{budget}'", f"missing or not a number ({exc})") from None


def check_budgets(report: dict, target: Target, source: str = "report.json",
                  kinds: tuple[str, ...] = ("absolute", "relative")) -> dict[str, dict]:
    out = {}
    for b in target.budgets.items():
        if b.kind not in kinds:
            continue
        value = measured_value(report, b.name, source)
        out[b.name] = {"limit": b.limit, "measured": value, "passed": value <= b.limit, "kind": b.kind,
                       "unit": b.unit}
        kernel = report.get("kernel") or {}
        if b.name in ("max_accuracy_drop", "max_top1_disagreement", "max_mean_kl") and kernel and not (kernel.get("exact_on_host") and kernel.get("same_arch")):
            out[b.name]["measured_on"] = f"host kernel {kernel['host_kernel']}, not the device's"
    return out


def load_report(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, None, "missing: run `tailor run` (or `tailor report`) first") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"line {exc.lineno}", f"not valid JSON: {exc.msg}") from None
    if not isinstance(report, dict):
        raise InputError(path, None, "must be a JSON object")
    for key, kind in REQUIRED.items():
        if not isinstance(report.get(key), kind):
            raise InputError(path, key, f"missing or not a {kind.__name__}")
    return report


def gate(run_dir: str | Path, target: str | None = None) -> tuple[bool, dict[str, dict], Target]:
    report = load_report(run_dir)
    source = str(Path(run_dir) / "report.json") if Path(run_dir).is_dir() else str(run_dir)
    bundle_target = Path(run_dir) / "bundle" / "target.toml"
    name = target or (str(bundle_target) if bundle_target.exists() else report["target"])
    tgt = load_target(name)
    results = check_budgets(report, tgt, source)
    return all(r["passed"] for r in results.values()), results, tgt


def kernel_summary(report: dict) -> str:
    """One line: the CPU the report's INT8 figures were measured on, against the target's kernel."""
    kernel = report.get("kernel")
    if not kernel:
        return "INT8 kernel: not recorded in this report (made before edge-tailor recorded it)"
    lead = "INT8 kernel" if kernel.get("exact_on_host") and kernel.get("same_arch") else \
        "WARNING: INT8 figures measured on a kernel other than the device's"
    return f"{lead}: {kernel['host_cpu']}, {kernel['note']}"


def print_table(results: dict[str, dict], target: Target) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"budgets of target {target.name}")
    for col in ("budget", "kind", "limit", "measured", "passed"):
        table.add_column(col)
    for name, r in results.items():
        mark = "[green]yes[/green]" if r["passed"] else "[red]NO[/red]"
        measured = f"{r['measured']:g}" + (f" ({r['measured_on']})" if r.get("measured_on") else "")
        table.add_row(name, r["kind"], f"{r['limit']:g} {r['unit']}", measured, mark)
    Console().print(table)
