"""report.json (DESIGN.md's contract) and the human report (markdown + PNG plots), assembled
from a run's stage records, so `tailor report DIR` can rebuild them at any time."""

from __future__ import annotations

from pathlib import Path

from edge_tailor.rundir import RunDir, write_json_atomic
from edge_tailor.target import load_target

from .gate import check_budgets


def _acc(record: dict | None, *path) -> float | None:
    node = record
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def stage_summaries(rec: dict[str, dict]) -> dict[str, str]:
    """One line per stage with the counts a reader checks first."""
    b, e, p, a, g, d, ab, x = (rec.get(k, {}) for k in ("baseline", "elicit", "prefer", "align", "generate", "distill",
                                                          "ablation", "export"))
    out = {}
    world = b.get("world") or {}
    if world.get("one_shot_spread") is not None:
        out["baseline"] = (f"one-shot student accuracy across demonstration styles spreads "
                           f"{100 * world['one_shot_spread']:.1f} points; sampling error of one score "
                           f"{100 * world['one_shot_sampling_stderr']:.1f} points")
    if e:
        out["elicit"] = (f"{e['questions_kept']} of {e['raw_questions']} drafted questions kept "
                         f"(dropped {e['questions_dropped']}); {e['rationales']} rationales, "
                         f"{e['rationales_correct']} with the right answer")
    if p:
        out["prefer"] = (f"{p['drafts_scored']} drafts scored ({p['scorer']}) on {p['preference_set']['kept']} of "
                         f"{p['preference_set']['of']} questions ({p['preference_set']['method']}); "
                         f"mean score by technique {p['score_by_technique']}")
    if a:
        margins = a.get("reward_margin") or [None]
        seeds = len(a.get("teacher_seeds") or {}) or 1
        out["align"] = a.get("skipped") or (f"{a['pairs']} pairs, {a.get('steps')} DPO steps, reward margin "
                                             f"{margins[0]} -> {margins[-1]} (first of {seeds} teacher seeds)")
    if g:
        out["generate"] = (f"{g.get('budget')} training examples per teacher (equal budgets); "
                           f"{g.get('workers', 1)} process(es)")
    if d:
        out["distill"] = (f"{d['training']['steps']} LoRA steps on {d['training']['examples']} examples, "
                          f"QAT {'on' if d.get('qat') else 'off'} ({d['training']['fake_quantized_linears']} "
                          "fake-quantized linears)")
    if ab.get("original_teacher"):
        trainings = ab.get("trainings", 2 * len(ab["original_teacher"]["seeds"]) - 1)
        out["ablation"] = f"{trainings} trainings besides `distill`'s, {ab.get('workers', 1)} at a time"
    if x:
        out["export"] = (f"parity max logit diff {x['parity']['max_abs_logit_diff']:.1e}, greedy "
                         f"{x['parity']['greedy_match']}/{x['parity']['prompts']}; quantization '{x['chosen']}'")
    return out


def assemble(run: RunDir, target_name: str) -> dict:
    rec = {s: (run.record(s) or {}).get("metrics", {}) for s in
           ("baseline", "generate", "distill", "ablation", "export", "bench", "align", "elicit", "prefer")}
    base, export, bench = rec["baseline"], rec["export"], rec["bench"]
    accuracy = {
        "teacher": _acc(base, "teacher_with_tools", "accuracy"),
        "teacher_no_tools": _acc(base, "teacher", "accuracy"),
        "student_before": _acc(base, "student_before", "accuracy"),
        "student_fp32": _acc(rec["distill"], "student_fp32", "accuracy"),
        "student_int8": _acc(export, "student_int8", "accuracy"),
        "stderr": {"teacher": _acc(base, "teacher_with_tools", "stderr"),
                   "student_before": _acc(base, "student_before", "stderr"),
                   "student_fp32": _acc(rec["distill"], "student_fp32", "stderr"),
                   "student_int8": _acc(export, "student_int8", "stderr")},
        "test_questions": _acc(rec["distill"], "student_fp32", "n"),
        # fp32 - shipped, paired by test question (bootstrap 95% interval): what the drop budget is read against
        "drop_paired": export.get("accuracy_drop_paired"),
        "student_tools": _acc(base, "student_before", "tools"),
    }
    latency = {k: bench.get(k) for k in ("ms_per_token_p50", "ms_per_token_p95", "ttft_ms", "tokens_per_s",
                                         "prompt_tokens_per_s", "peak_rss_mb", "model_mb", "parameters",
                                         "model_bytes_per_param", "threads", "prompt_tokens", "new_tokens", "repeats")}
    latency["reference"] = bench.get("reference")
    latency["variants"] = bench.get("variants")
    latency["peers"] = bench.get("peers")
    latency["fp32_graph"] = bench.get("fp32_graph")
    report = {
        "target": target_name,
        # processes the training and generating stages ran on (accelerate launch / torchrun; 1 by default)
        "world_size": max([(run.record(s) or {}).get("world_size", 1) for s in rec] or [1]),
        "accuracy": accuracy,
        "ablation": {"skipped": rec["ablation"].get("skipped"),
                     "original_teacher": rec["ablation"].get("original_teacher"),
                     "aligned_teacher": rec["ablation"].get("aligned_teacher"),
                     "gold": rec["ablation"].get("gold"),
                     # aligned - original, paired by student seed and test question (resampling teacher seeds,
                     # student seeds and questions), with a bootstrap 95% interval
                     "difference": rec["ablation"].get("difference"),
                     "aligned_share_of_gold": rec["ablation"].get("aligned_share_of_gold"),
                     "trainings": rec["ablation"].get("trainings"),
                     "student_before": accuracy["student_before"]},
        "latency": latency,
        "alignment": {"held_out": rec["generate"].get("held_out"), "pairs": rec["align"].get("pairs"),
                      "reward_margin": rec["align"].get("reward_margin"),
                      # what the student's one-shot score could tell apart (edge_tailor.arte.signal_quality)
                      "signal": {"by_technique": rec["prefer"].get("score_by_technique"),
                                 "std_by_technique": rec["prefer"].get("score_std_by_technique"),
                                 **(rec["prefer"].get("signal") or {})} if rec["prefer"] else None,
                      # the style mix of each teacher's training data (Task.style_of)
                      "data_style_mix": {t: d.get("style_mix") for t, d in (rec["generate"].get("data") or {}).items()}},
        # the shipped file against the fp32 graph, per held-out position (edge_tailor.export.fidelity)
        "fidelity": export.get("fidelity"),
        # with distill.compare_ptq: each arm's quantized file against its own fp32 graph (edge_tailor.qat_vs_ptq)
        "qat_vs_ptq": rec["ablation"].get("qat_vs_ptq"),
        "export": {"parity": export.get("parity"), "fallback": export.get("chosen"), "graph": export.get("graph"),
                   "attempts": [_attempt_summary(a, (bench.get("attempts") or {}).get(a["setting"]))
                                for a in export.get("attempts") or []],
                   "weight_only": export.get("weight_only"),
                   # what the shipped file is: the final attempt's quantization (the card describes this)
                   "quantization": next((a["quantization"] for a in export.get("attempts") or [] if a.get("shipped")),
                                        None)},
        # the CPU the INT8 accuracy was measured on, against the target's kernel (edge_tailor.hostcpu)
        "kernel": export.get("kernel") or bench.get("kernel"),
        "stages": {s: info.get("seconds") for s, info in run.manifest().get("stages", {}).items()},
        "stage_summary": stage_summaries(rec),
    }
    report["budgets"] = check_budgets(report, load_target(target_name))
    report["passed"] = all(b["passed"] for b in report["budgets"].values())
    return report


PLOTS = "report"  # <run>/report/*.png


def write_report(run_dir: RunDir, target: str) -> dict:
    """Assemble report.json from the run's records, write it with report.md and the plots; return it."""
    report = assemble(run_dir, target)
    plots(report, run_dir.root / PLOTS)
    write_json_atomic(run_dir.root / "report.json", report)
    (run_dir.root / "report.md").write_text(markdown(report, PLOTS))
    return report


def _attempt_summary(attempt: dict, latency: dict | None) -> dict:
    """One candidate quantization as the report shows it: what it is, how faithful, how accurate, how fast."""
    files = attempt["quantization"]["files"]
    acc = (attempt["accuracy"] or {}).get("model.onnx") or {}  # not scored when its fidelity broke a budget
    return {"setting": attempt["setting"], "kind": files["model.onnx"]["kind"], "mb": files["model.onnx"]["mb"],
            "accuracy": acc.get("accuracy"), "stderr": acc.get("stderr"), "drop": attempt["drop"],
            "drop_ci95": (attempt.get("drop_paired") or {}).get("ci95"),
            "top1_agreement": attempt["fidelity"]["top1_agreement"], "mean_kl": attempt["fidelity"]["mean_kl"],
            "all_positions": attempt["fidelity"].get("all_positions"),
            "holds": attempt["holds"], "shipped": attempt["shipped"], "measured_only": attempt.get("measured_only", False),
            "ms_per_token_p50": (latency or {}).get("ms_per_token_p50")}


def _fmt(value, pct: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.3g}"


def plots(report: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    acc, err = report["accuracy"], report["accuracy"]["stderr"]
    names = ["teacher", "student_before", "student_fp32", "student_int8"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    values = [acc.get(n) or 0 for n in names]
    ax.bar(names, values, yerr=[err.get(n) or 0 for n in names], color=["#777", "#c99", "#69c", "#36a"], capsize=4)
    ab = report["ablation"]
    arms = [(key, label) for key, label in (("original_teacher", "SFT on original\nteacher data"),
                                            ("aligned_teacher", "SFT on aligned\nteacher data"),
                                            ("gold", "SFT on gold\nrationales")) if ab.get(key)]
    for i, (key, _) in enumerate(arms):
        ax.errorbar([4 + i], [ab[key]["mean"]], yerr=[ab[key]["std"]], fmt="o", color="#a63", capsize=4)
    ax.set_xticks(range(4 + len(arms)))
    ax.set_xticklabels(names + [label for _, label in arms], fontsize=7)
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy (error bars: sampling error / seed spread)", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "accuracy.png", dpi=120)
    plt.close(fig)

    _accuracy_latency_plot(report, folder / "accuracy_latency.png", plt)
    return ["accuracy.png", "accuracy_latency.png"]


def _accuracy_latency_plot(report: dict, path: Path, plt) -> None:
    """Every variant measured (fp32 graph, each candidate quantization), with sampling-error bars, the
    accuracy budget (fp32 minus the allowed drop) and the latency budget drawn, the shipped file ringed."""
    acc, lat = report["accuracy"], report["latency"]
    budgets = report.get("budgets") or {}
    points = []
    fp32_ms = (lat.get("fp32_graph") or {}).get("ms_per_token_p50")
    if fp32_ms and acc.get("student_fp32") is not None:
        points.append(("fp32 graph", fp32_ms, acc["student_fp32"], acc["stderr"].get("student_fp32") or 0, False))
    for a in (report.get("export") or {}).get("attempts") or []:
        if a.get("ms_per_token_p50") is not None and a["accuracy"] is not None:
            points.append((f"{a['setting']} ({a['kind']})", a["ms_per_token_p50"], a["accuracy"], a["stderr"], a["shipped"]))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, ms, a, err, shipped in points:
        ax.errorbar([ms], [a], yerr=[err], fmt="o", capsize=4, label=label,
                    markeredgecolor="black" if shipped else None, markeredgewidth=2 if shipped else 0)
    if acc.get("student_fp32") is not None and "max_accuracy_drop" in budgets:
        floor = acc["student_fp32"] - budgets["max_accuracy_drop"]["limit"]
        ax.axhline(floor, color="#c33", linestyle="--", linewidth=1, label=f"accuracy budget (fp32 - {budgets['max_accuracy_drop']['limit']:g})")
    ref = lat.get("reference") or {}
    limit, label = None, None
    if "ms_per_token_p50" in budgets:
        limit, label = budgets["ms_per_token_p50"]["limit"], "latency budget (p50)"
    elif "ms_per_token_vs_torch_fp32" in budgets and ref.get("torch_fp32_ms_per_token_p50"):
        # a relative budget, drawn at this run's interleaved PyTorch figure
        limit = budgets["ms_per_token_vs_torch_fp32"]["limit"] * ref["torch_fp32_ms_per_token_p50"]
        label = "latency budget (x PyTorch fp32)"
    right = 1.3 * max((ms for _, ms, _, _, _ in points), default=1.0)
    if limit is not None and limit <= 3 * right:
        right = max(right, 1.1 * limit)
        ax.axvline(limit, color="#36c", linestyle="--", linewidth=1, label=label)
    elif limit is not None:  # far right of every variant: say so rather than squash the points
        ax.text(0.98, 0.02, f"{label}: {limit:.3g} ms, off the chart", transform=ax.transAxes, ha="right",
                fontsize=7, color="#36c")
    ax.set_xlim(0, right)
    values = [a for _, _, a, _, _ in points] + ([floor] if acc.get("student_fp32") is not None and "max_accuracy_drop" in budgets else [])
    if values:
        low, high = min(values), max(values)
        pad = max(0.05, (high - low) * 0.3)  # never zoom to a sliver: differences within noise must look small
        ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    ax.set_xlabel("ms per generated token (p50, edge runtime, target threads)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy against latency (shipped file ringed; bars: sampling error)", fontsize=9)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def qat_vs_ptq_lines(comparison: dict | None) -> list[str]:
    """The QAT-against-PTQ table: per scheme, each arm's quantized file against its own fp32 graph."""
    if not comparison:
        return []
    lines = ["", "## QAT against PTQ", "", f"The same fine-tuning without fake quantization (PTQ) and with the scheme "
             f"faked (QAT); each file against its own fp32 graph ({comparison['graph']} one) at the decode positions "
             f"of {comparison['held_out_prompts']} held-out prompts:", "",
             "| scheme | PTQ: top-1 agreement | PTQ: KL | QAT: top-1 agreement | QAT: KL |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for scheme, arms in comparison["by_scheme"].items():
        ptq, qat = arms["ptq"], arms["qat"]
        lines.append(f"| {scheme} | {_fmt(ptq['top1_agreement'])} | {ptq['mean_kl']:.4f} | "
                     f"{_fmt(qat['top1_agreement'])} | {qat['mean_kl']:.4f} |")
    return lines


def signal_lines(alignment: dict) -> list[str]:
    """What the student's one-shot score told apart, and the style mix of each teacher's training data."""
    sig, mixes = alignment.get("signal") or {}, alignment.get("data_style_mix") or {}
    lines = []
    if sig.get("by_technique"):
        std = sig.get("std_by_technique") or {}
        per = ", ".join(f"{t} {v:.3f}" + (f" +- {std[t]:.3f}" if t in std else "")
                        for t, v in sig["by_technique"].items())
        lines += ["", f"The student's one-shot score by drafting technique (mean +- spread across drafts): {per}."]
        if sig.get("sampling_error") is not None:
            reliability = ("n/a (no spread)" if sig.get("reliability") is None else
                           f"{sig['reliability']:.2f} (split-half r {sig['split_half_r']:.2f})")
            lines.append(f"Across {sig['drafts']} drafts the scores spread by {sig['score_std']:.3f}, against a "
                         f"sampling error of {sig['sampling_error']:.3f} for one draft on {sig['questions']} "
                         f"questions; reliability {reliability}: near 0, the pairs DPO learns from are noise.")
    if any(mixes.values()):
        lines += ["", "Style mix of each teacher's training data: " + "; ".join(
            f"{t}: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(m.items(), key=lambda kv: -kv[1]))
            for t, m in mixes.items() if m) + "."]
    return lines


def ablation_verdict(ab: dict) -> str:
    """One sentence: the aligned-minus-original difference with its paired bootstrap interval (or, in a
    report made before the interval was recorded, against the standard error over seeds)."""
    d = ab.get("difference")
    if d:
        low, high = d["ci95"]
        verdict = ("the aligned teacher's data taught more" if low > 0 else
                   "the original teacher's data taught more" if high < 0 else "no difference the interval can tell from 0")
        teachers = f"{d['n']['teacher_seeds']} teacher seeds x " if "teacher_seeds" in d["n"] else ""
        return (f"Aligned minus original teacher's data: {100 * d['mean']:+.1f} points, 95% interval "
                f"[{100 * low:+.1f}, {100 * high:+.1f}] ({d['method']}: {teachers}{d['n']['seeds']} student seeds x "
                f"{d['n']['questions']} questions, {d['resamples']} resamples): {verdict}.")
    a, o = ab["aligned_teacher"], ab["original_teacher"]
    diff = a["mean"] - o["mean"]
    se = (a["std"] ** 2 / len(a["seeds"]) + o["std"] ** 2 / len(o["seeds"])) ** 0.5
    if se == 0:
        return f"Aligned minus original teacher's data: {100 * diff:+.1f} points (one seed each: no spread to judge by)."
    verdict = ("the aligned teacher's data taught more" if diff > 2 * se else
               "the original teacher's data taught more" if diff < -2 * se else "no difference beyond seed noise")
    return (f"Aligned minus original teacher's data: {100 * diff:+.1f} points, standard error over seeds "
            f"{100 * se:.1f} points: {verdict}.")


def markdown(report: dict, plot_folder: str) -> str:
    acc, lat, ab = report["accuracy"], report["latency"], report["ablation"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    broken = [n for n, b in report["budgets"].items() if not b["passed"]]
    lines = [f"# edge-tailor report: target `{report['target']}`", "",
             f"**Verdict: {verdict}**" + (f" (broken: {', '.join(broken)})" if broken else " (every budget held)")
             + f". Shipped student ({(report.get('export') or {}).get('fallback') or 'INT8'}) accuracy "
             f"{_fmt(acc['student_int8'])}, "
             f"{_fmt(lat.get('ms_per_token_p50'), False)} ms/token p50 on the edge runtime.", "",
             "## Accuracy (test split)", "", "| model | accuracy | sampling error |", "| --- | --- | --- |"]
    kernel = report.get("kernel") or {}
    foreign = kernel and not (kernel.get("exact_on_host") and kernel.get("same_arch"))
    for name in ("teacher", "student_before", "student_fp32", "student_int8"):
        label = f"{name} (host kernel differs from the device's)" if name == "student_int8" and foreign else name
        lines.append(f"| {label} | {_fmt(acc[name])} | {_fmt(acc['stderr'].get(name))} |")
    drop = acc.get("drop_paired")
    if drop:
        lines += ["", f"fp32 minus shipped, paired over the same {drop['questions']} test questions: "
                  f"{100 * drop['mean']:+.1f} points, 95% interval [{100 * drop['ci95'][0]:+.1f}, "
                  f"{100 * drop['ci95'][1]:+.1f}] ({drop['fp32_only_right']} right only in fp32, "
                  f"{drop['quantized_only_right']} only in the shipped file)."]
    if kernel:
        lines += ["", f"INT8 measured on {kernel['host_cpu']} (ONNX Runtime kernel `{kernel['host_kernel']}`; "
                  f"target ISA `{kernel['target_isa']}`): {kernel['note']}."]
    if acc.get("student_tools") not in (None, "none"):
        lines += ["", f"The student decodes with tools: {acc['student_tools']} (it fills in the results of the "
                  "student's own `a op b=` equations; the student chooses the numbers and operations). The teacher "
                  "row is the teacher with its generation tools; without them it scored "
                  f"{_fmt(acc.get('teacher_no_tools'))}."]
    lines += ["", f"![accuracy]({plot_folder}/accuracy.png)", "", "## What ARTE bought (ablation)", "",
              "| student trained on | mean | std | seeds |", "| --- | --- | --- | --- |",
              f"| nothing (student before) | {_fmt(ab.get('student_before'))} | - | - |"]
    if ab.get("skipped"):
        lines += ["", f"Not measured: {ab['skipped']} (`distill.ablation_seeds` > 0 trains it)."]
    for key, label in (("original_teacher", "original teacher's data"), ("aligned_teacher", "aligned teacher's data"),
                       ("gold", "the task's gold rationales (ceiling)")):
        if ab.get(key):
            lines.append(f"| {label} | {_fmt(ab[key]['mean'])} | {_fmt(ab[key]['std'])} | "
                         f"{', '.join(_fmt(s) for s in ab[key]['seeds'])} |")
        by_teacher = (ab.get(key) or {}).get("by_teacher_seed") or {}
        for k, runs in by_teacher.items() if len(by_teacher) > 1 else ():
            lines.append(f"| - teacher seed {k} (DPO run {int(k) + 1}) | {_fmt(runs['mean'])} | {_fmt(runs['std'])} | "
                         f"{', '.join(_fmt(s) for s in runs['seeds'])} |")
    if ab.get("original_teacher") and ab.get("aligned_teacher"):
        lines += ["", ablation_verdict(ab)]
    if ab.get("aligned_share_of_gold") is not None:
        lines += ["", f"The aligned teacher's data reached {100 * ab['aligned_share_of_gold']:.0f}% of the gold "
                  f"ceiling ({ab['gold']['examples']} gold examples, "
                  + (f"on {ab['gold']['questions']}, " if ab["gold"].get("questions") else "")
                  + "the same training budget)."]
    lines += signal_lines(report.get("alignment") or {})
    held = (report.get("alignment") or {}).get("held_out") or {}
    if held:
        lines += ["", "What alignment changed in the teacher's drafts (held-out seeds):", "",
                  "| teacher | mean preference score | stderr | well-formed questions | well-formed rationales "
                  "| style mix | mean chars |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for key, h in held.items():
            styles = ", ".join(f"{name} {100 * share:.0f}%" for name, share in
                               sorted((h.get("style_mix") or {}).items(), key=lambda kv: -kv[1])) or "-"
            lines.append(f"| {key} | {h['mean_preference_score']:.3f} | {h['stderr']:.3f} | "
                         f"{_fmt(h.get('well_formed_question_share'))} | {_fmt(h['well_formed_rationale_share'])} | "
                         f"{styles} | {h['mean_rationale_chars']} |")
    lines += qat_vs_ptq_lines(report.get("qat_vs_ptq"))
    ref = lat.get("reference") or {}
    lines += ["", "## Latency (edge runtime, target threads)", "", "| figure | value |", "| --- | --- |"]
    for key in ("ms_per_token_p50", "ms_per_token_p95", "ttft_ms", "tokens_per_s", "prompt_tokens_per_s",
                "peak_rss_mb", "model_mb", "model_bytes_per_param"):
        lines.append(f"| {key} | {_fmt(lat.get(key), False)} |")
    if ref:
        lines.append(f"| PyTorch fp32 eager ms/token (interleaved) | {_fmt(ref['torch_fp32_ms_per_token_p50'], False)} |")
        lines.append(f"| edge ms/token (interleaved) / PyTorch fp32 | {_fmt(ref['ratio'], False)} |")
    peers = lat.get("peers") or {}
    if peers:
        base = (peers.get("optimum int8") or {}).get("ms_per_token")
        lines += ["", "Peer comparison on this run's student (interleaved rounds, batch 1, target threads; "
                  "`benchmarks/peers.py` does the same on a 134M reference model):", "",
                  "| engine | ms/token | x Optimum INT8 | first token ms |", "| --- | --- | --- | --- |"]
        for name, p in peers.items():
            ratio = f"{p['ms_per_token'] / base:.2f}" if base else "-"
            lines.append(f"| {name} | {p['ms_per_token']:.3f} | {ratio} | {p['ttft_ms']:.2f} |")
    attempts = (report.get("export") or {}).get("attempts") or []
    if attempts:
        graph = (report["export"].get("graph") or {})
        lines += ["", f"Quantizations measured ({graph.get('attention', '?')} attention graph"
                  + (f"; unfused because {graph['why']}" if graph.get("why") else "") + "; fidelity against the fp32 "
                  "graph on held-out sequences, at the positions that pick the continuation's tokens, and in brackets "
                  "at every position, prompt text included):", "",
                  "| candidate | kind | MiB | accuracy | drop (paired 95% interval) | top-1 agreement | KL | ms/token | holds budgets | shipped |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for a in attempts:
            ms = f"{a['ms_per_token_p50']:.3f}" if a.get("ms_per_token_p50") is not None else "-"
            every = a.get("all_positions")
            top1 = f"{100 * a['top1_agreement']:.1f}%" + (f" ({100 * every['top1_agreement']:.1f}%)" if every else "")
            kl = f"{a['mean_kl']:.4f}" + (f" ({every['mean_kl']:.4f})" if every else "")
            drop = ("not scored (fidelity breaks a budget)" if a["drop"] is None else f"{100 * a['drop']:+.1f}"
                    + (f" [{100 * a['drop_ci95'][0]:+.1f}, {100 * a['drop_ci95'][1]:+.1f}]" if a.get("drop_ci95") else ""))
            accuracy = "-" if a["accuracy"] is None else f"{_fmt(a['accuracy'])} +- {_fmt(a['stderr'])}"
            lines.append(f"| {a['setting']} | {a['kind']} | {a['mb']:.2f} | {accuracy} "
                         f"| {drop} | {top1} | {kl} | {ms} | "
                         f"{'measured only' if a['measured_only'] else 'yes' if a['holds'] else 'no'} | "
                         f"{'**yes**' if a['shipped'] else ''} |")
    lines += ["", f"![accuracy against latency]({plot_folder}/accuracy_latency.png)", "",
              "## Budgets", "", "| budget | kind | limit | measured | passed |", "| --- | --- | --- | --- | --- |"]
    for name, b in report["budgets"].items():
        lines.append(f"| {name} | {b['kind']} | {b['limit']:g} {b['unit']} | {b['measured']:g} | "
                     f"{'yes' if b['passed'] else '**NO**'} |")
    lines += ["", "Relative budgets compare figures measured interleaved in this run (robust on shared machines);",
              "absolute budgets are meant for runs on the real device.", "", "## Stages", "",
              "| stage | seconds | summary |", "| --- | --- | --- |"]
    summary = report.get("stage_summary", {})
    lines += [f"| {s} | {sec} | {summary.get(s, '')} |" for s, sec in report["stages"].items()]
    return "\n".join(lines) + "\n"
