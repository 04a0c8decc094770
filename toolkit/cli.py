"""`tailor`: the command line of edge-tailor."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

EPILOG = """examples:
  tailor run                                 the whole pipeline on the embedded default world
  tailor run --target arm64-a76 distill.lora.r=8
  tailor run --config my.yaml --out runs     your models and data (see README, "Real models")
  tailor status runs/default                 where a run stands
  tailor targets                             the device targets and their budgets
  tailor config show elicit.drafts=64        the resolved config
  tailor config show --diff --config my.yaml what my.yaml changes from the shipped default
  tailor -v run                              show every library warning and log line (default: <run>/log.txt)

exit codes:
  0  success
  1  a budget or check failed
  2  bad input: config, override, target, data file, model folder, run directory (one line naming
     the file and the field or line; nothing is written)
  3  environment failure: disk full, read-only or unwritable folder, permission denied, or another
     tailor process holds the run directory's lock (<run>/.lock)
  130 / 143  interrupted by Ctrl-C (SIGINT) / SIGTERM: the stage it stopped is removed and marked
     interrupted (`tailor status`); the same command again resumes from it
"""


def _overrides_help(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. distill.lora.r=16 elicit.drafts=64")
    parser.add_argument("--config", help="YAML, TOML or JSON run config, by its suffix (default: the embedded world)")
    parser.add_argument("--target", help="device target: a name from `tailor targets` or a .toml path")


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import STAGES

    parser = argparse.ArgumentParser(
        prog="tailor", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Tailor a small student LM to an edge device target: align the teacher to the student (ARTE), "
                    "distill with target-matched QAT, export to ONNX, quantize, benchmark and gate on budgets.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show library warnings, library logging and trainer output on the terminal (by default "
                             "they go to <run>/log.txt, and the terminal shows the stages, errors and the verdict)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run every stage (skipping finished, unchanged ones)",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Run the pipeline into <out>/<name>. A finished stage whose config and inputs "
                                     "are unchanged is skipped; an interrupted one is redone.",
                         epilog="stages, in order:\n" + "\n".join(f"  {s.name:<10} {s.summary}" for s in STAGES))
    _overrides_help(run)
    run.add_argument("--out", default="runs", help="parent folder of run directories (default: runs)")
    run.add_argument("--force", action="append", default=[], metavar="STAGE", help="redo this stage (repeatable)")
    run.add_argument("--only", action="append", default=[], metavar="STAGE", help="run only this stage (repeatable)")

    for st in STAGES:
        if st.name in ("bench", "report"):  # own commands below (`tailor bench BUNDLE`, `tailor report DIR`)
            continue
        one = sub.add_parser(st.name, help=f"run one stage: {st.summary}")
        one.add_argument("--run", required=True, help="the run directory")
        one.add_argument("--force", action="store_true", help="redo it even if up to date")

    status = sub.add_parser("status", help="show where a run stands")
    status.add_argument("run_dir")

    sub.add_parser("targets", help="list the shipped device targets with their budgets")

    gate = sub.add_parser("gate", help="compare a run's report with its target's budgets (exit 0 / 1 / 2)",
                          description="Exit 0 when every budget holds, 1 when one is broken, 2 on bad input.")
    gate.add_argument("run_dir", help="a run directory (or a report.json)")
    gate.add_argument("--target", help="judge against another target's budgets")

    verify = sub.add_parser("verify", help="re-check a bundle's hashes and run a smoke decode (exit 0 / 1)",
                            description="Check manifest.sha256 against manifest.json, every file's sha256 against "
                                        "manifest.json (no unlisted file allowed), the target and the recorded "
                                        "smoke decode; print the manifest's sha256.")
    verify.add_argument("bundle")
    verify.add_argument("--target", help="the target the bundle must be built for")
    verify.add_argument("--digest", metavar="HEX",
                        help="also require manifest.json's sha256 to equal HEX (printed by a passing verify), to pin "
                             "a deployment to one bundle. The bundle's own manifest.sha256 protects against "
                             "corruption and careless edits only; a digest pinned outside the bundle also protects "
                             "against deliberate tampering (which can rewrite manifest.sha256 too)")

    verify.add_argument("--public-key", metavar="PEM",
                        help="also require manifest.sig to be this Ed25519 key's signature of manifest.json "
                             "(`tailor sign`): protects against tampering by anyone without the private key")
    verify.add_argument("--on-target", action="store_true",
                        help="then run the bundle on its target's instruction set without the device (qemu-user: "
                             "qemu-aarch64 -cpu cortex-a76 in a Debian arm64 root prepared once under "
                             "~/.cache/edge-tailor/emulation, qemu-x86_64 -cpu Haswell for avx2) and check top-1 "
                             "agreement and mean KL against the fp32 reference there; exit 1 when the target's "
                             "budgets break on it (docs/targets.md)")
    verify.add_argument("--fp32", metavar="DIR",
                        help="with --on-target: the fp32 ONNX export to measure KL against (default: the run's "
                             "export/fp32 beside the bundle; without one, top-1 only)")

    sign = sub.add_parser("sign", help="sign a bundle's manifest with an Ed25519 private key (writes manifest.sig)",
                          description="Check the bundle's files, then write manifest.sig: the base64 Ed25519 "
                                      "signature of manifest.json, which holds every other file's sha256. "
                                      "`tailor verify BUNDLE --public-key KEY.pub` and `edge_runtime.py BUNDLE "
                                      "--public-key KEY.pub` check it (docs/security.md).")
    sign.add_argument("bundle")
    sign.add_argument("--key", required=True, metavar="PEM", help="the private key (from `tailor keygen`)")

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for `tailor sign`",
                            description="Write a private key to KEY (PEM, mode 0600: keep it off devices) and its "
                                        "public key to KEY.pub (ship this one to devices); refuses to overwrite.")
    keygen.add_argument("key", metavar="KEY")

    bench = sub.add_parser("bench", help="measure a bundle's latency on the edge runtime (or --run DIR: the stage)")
    bench.add_argument("bundle", nargs="?")
    bench.add_argument("--run", help="run the pipeline's bench stage in this run directory instead")
    bench.add_argument("--force", action="store_true", help="with --run: redo it even if up to date")
    bench.add_argument("--target", help="run with this target's threads and shapes instead of the bundle's")
    bench.add_argument("--model-file", default="model.onnx")
    bench.add_argument("--config", help="run config whose task's test split scores the bundle (default: the "
                                        "embedded world's); --no-accuracy skips it")
    bench.add_argument("--no-accuracy", action="store_true", help="latency only")

    report = sub.add_parser("report", help="rebuild report.json and report.md from a run's records")
    report.add_argument("run_dir")

    config = sub.add_parser("config", help="config tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    _overrides_help(show)
    show.add_argument("--diff", action="store_true",
                      help="print only what differs from the shipped default, one dotted key a line: "
                           "key: default -> value (a run's config.yaml works as --config too)")

    toy = sub.add_parser("toy", help="the embedded default world")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    build = toy_sub.add_parser("build", help="build tokenizer, corpora, teacher and student from a seed")
    build.add_argument("--out", default=str(Path.home() / ".cache" / "edge-tailor" / "world"),
                       help="where to build (use it with EDGE_TAILOR_WORLD=<out>)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--scale", type=float, default=1.0, help="fraction in (0, 1] of documents and steps (tests use 0.01)")
    return parser


def _load(args):
    from .config import load_config
    from .target import load_target

    overrides = list(args.overrides) + ([f"target={args.target}"] if args.target else [])
    cfg = load_config(args.config, overrides)
    return cfg, load_target(cfg.target)


def cmd_run(args) -> int:
    from . import distributed
    from .config import config_hash, config_source, load_config, origin_of
    from .errors import InputError
    from .pipeline import STAGE_NAMES, preflight, run_pipeline
    from .rundir import RunDir
    from .target import target_hash

    overrides = list(args.overrides) + ([f"target={args.target}"] if args.target else [])
    cfg = load_config(args.config, overrides)
    for option, names in (("--force", args.force), ("--only", args.only)):
        for name in names:
            if name not in STAGE_NAMES:
                raise InputError("command line", f"{option} {name}",
                                 f"unknown stage (stages: {', '.join(STAGE_NAMES)})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "--out", "not a folder")
    run = RunDir(out / cfg.name)
    source = config_source(args.config)
    # Every input is checked before anything is written: a bad one leaves no run directory behind.
    target = preflight(cfg, lambda field: origin_of(field, source, overrides), run, set(args.only) or None)
    import torch

    with _processes():  # rank 0 shows the progress and writes the run directory
        # processes on one machine share its cores (accelerate / torchrun set LOCAL_WORLD_SIZE)
        torch.set_num_threads(max(1, (cfg.threads or target.runtime.intra_op_threads) // distributed.local_world_size()))
        if distributed.is_main():
            _print_kernel_line(target)
        run_pipeline(cfg, run, target_hash(target), only=set(args.only) or None, force=set(args.force),
                     config_text=_yaml(cfg))
    if not distributed.is_main():
        return 0  # the verdict is the main process's exit code
    print(f"run directory: {run.root}  (config hash {config_hash(cfg)})")
    if (run.root / "report.json").exists() and run.record("report"):
        return _gate_and_print(str(run.root), None)
    return 0


def _print_kernel_line(target) -> None:
    """Where this host's ONNX Runtime INT8 kernel differs from the target device's, say so (edge_tailor.hostcpu)."""
    from .hostcpu import kernel_line

    print(kernel_line(target), file=sys.stderr)


def _gate_and_print(run_dir: str, target: str | None) -> int:
    from .benchmarks.gate import gate, kernel_summary, load_report, print_table

    passed, results, tgt = gate(run_dir, target)
    print(kernel_summary(load_report(run_dir)), file=sys.stderr)
    print_table(results, tgt)
    broken = [n for n, r in results.items() if not r["passed"]]
    print("verdict: PASSED, every budget held" if passed else f"verdict: FAILED, broken budget(s): {', '.join(broken)}")
    return 0 if passed else 1


def cmd_gate(args) -> int:
    return _gate_and_print(args.run_dir, args.target)


def cmd_verify(args) -> int:
    from .errors import ArtifactError
    from .export.bundle import verify_bundle

    from .target import load_target

    try:
        target = Path(args.bundle) / "target.toml"
        if target.is_file():
            _print_kernel_line(load_target(target))
        info = verify_bundle(args.bundle, args.target, digest=args.digest, public_key=args.public_key)
    except ArtifactError as exc:
        print(f"verify FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"verify OK: {args.bundle}: {json.dumps(info, default=str)[:400]}")
    print(f"manifest sha256: {info['manifest_sha256']}" + (" (matches --digest)" if args.digest else ""))
    if args.public_key:
        print(f"signature OK: manifest.sig under {args.public_key}")
    if args.on_target:
        return _verify_on_target(args.bundle, args.fp32)
    return 0


def _verify_on_target(bundle: str, fp32: str | None) -> int:
    from .emulation import check_on_target

    result = check_on_target(bundle, fp32)
    kl = "not measured (no fp32 graph: --fp32 DIR)" if result["mean_kl"] is None else f"{result['mean_kl']:.5f}"
    print(f"on target {result['isa']} ({result['emulator']}): top-1 agreement with fp32 {result['top1']:.4f} at "
          f"{result['positions']} positions, mean KL {kl}, smoke tokens equal the host's: {result['tokens_equal_host']}")
    for name, check in result["budgets"].items():
        print(f"  {name}: {check['measured']} (limit {check['limit']}): {'held' if check['passed'] else 'BROKEN'}")
    print(json.dumps({"on_target": result}))
    print("on-target: PASSED" if result["passed"] else "on-target: FAILED, a budget broke on the target's CPU")
    return 0 if result["passed"] else 1


def cmd_sign(args) -> int:
    from .export.signing import sign_bundle

    info = sign_bundle(args.bundle, args.key)
    print(f"signed: {info['signature']} (manifest sha256 {info['manifest_sha256']}, key {info['key']})")
    return 0


def cmd_keygen(args) -> int:
    from .export.signing import generate_keypair, public_key_fingerprint

    private, public = generate_keypair(args.key)
    print(f"private key: {private} (keep it where bundles are released, never on a device)")
    print(f"public key: {public} (key {public_key_fingerprint(public.read_bytes())}; for "
          "`tailor verify --public-key` and edge_runtime.py --public-key)")
    return 0


def cmd_bench(args) -> int:
    import shutil
    import tempfile

    from .target import load_target, target_path

    if args.run:
        return cmd_stage(args)
    if not args.bundle:
        raise _usage("tailor bench: give a BUNDLE folder or --run DIR")
    bundle = Path(args.bundle)
    if not (bundle / args.model_file).is_file():
        raise _usage(f"{bundle / args.model_file}: missing: not a bundle")
    if (bundle / "manifest.json").is_file():
        from .export.bundle import verify_bundle

        verify_bundle(bundle)  # hashes and smoke decode: measure what was shipped, nothing else
    from .export.runtime import bundle_uses_calculator

    calculator = bundle_uses_calculator(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        if args.target:  # the bundle's files under another target's runtime block and shapes (no manifest:
            for f in bundle.iterdir():  # the mix is no longer the shipped bundle, and was verified above)
                if f.is_file() and f.name not in ("target.toml", "manifest.json", "manifest.sha256"):
                    (Path(tmp) / f.name).symlink_to(f.resolve())
            shutil.copy2(target_path(args.target), Path(tmp) / "target.toml")
            bundle = Path(tmp)
        _print_kernel_line(load_target(bundle / "target.toml"))
        return _bench_bundle(args, bundle, calculator)


def _bench_bundle(args, bundle: Path, calculator: bool) -> int:
    from .benchmarks.latency import measure

    result = measure(bundle, args.model_file)
    if not args.no_accuracy:
        from .config import load_config
        from .benchmarks.accuracy import edge_accuracy
        from .tasks import load_task

        cfg = load_config(args.config)
        task = load_task(cfg.task)
        accuracy = edge_accuracy(bundle, task, task.test[: cfg.evaluate.test_questions], cfg, args.model_file,
                                 calculator=calculator)
        result["accuracy"] = {k: v for k, v in accuracy.items() if k != "correct"}
    print(json.dumps(result, indent=2))
    return 0


def cmd_report(args) -> int:
    from .config import load_config
    from .rundir import RunDir
    from .benchmarks.report import write_report

    run = RunDir(args.run_dir)
    if not (run.root / "config.yaml").exists():
        raise _usage(f"{run.root / 'config.yaml'}: missing: not a run directory")
    report = write_report(run, load_config(run.root / "config.yaml").target)
    print(f"wrote {run.root / 'report.json'} and {run.root / 'report.md'} (passed: {report['passed']})")
    return 0


def cmd_stage(args) -> int:
    from .config import load_config
    from .pipeline import preflight, run_pipeline
    from .rundir import RunDir
    from .target import target_hash

    run = RunDir(args.run)
    cfg_path = run.config_path
    if not cfg_path.is_file():
        raise _usage(f"{cfg_path}: missing: not a run directory (make one with `tailor run`)")
    cfg = load_config(cfg_path)
    target = preflight(cfg, lambda field: str(cfg_path), run, {args.command})
    with _processes():
        run_pipeline(cfg, run, target_hash(target), only={args.command},
                     force={args.command} if args.force else set())
    return 0


@contextmanager
def _processes():
    """Join the launcher's processes, if any (edge_tailor.distributed): rank 0 shows the progress."""
    from . import distributed

    distributed.check_launcher()
    distributed.init()
    if not distributed.is_main():
        os.environ["EDGE_TAILOR_QUIET"] = "1"
    try:
        yield
    finally:
        distributed.shutdown()


def cmd_status(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .pipeline import STAGES
    from .rundir import RunDir

    run = RunDir(args.run_dir)
    if not run.manifest_path.exists():
        raise _usage(f"{run.manifest_path}: missing: not a run directory")
    manifest = run.manifest()
    table = Table(title=f"run {run.root}  (config {manifest.get('config_hash')}, git {str(manifest.get('git_revision'))[:8]})")
    for col in ("stage", "status", "seconds", "fingerprint"):
        table.add_column(col)
    for st in STAGES:
        info = manifest.get("stages", {}).get(st.name, {})
        status = info.get("status", "not run")
        if status == "done" and run.record(st.name) is None:
            status = "interrupted"
        table.add_row(st.name, status, str(info.get("seconds", "")), info.get("fingerprint", ""))
    Console().print(table)
    return 0


def cmd_targets(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .target import format_budgets, list_targets, load_target

    table = Table(title="device targets (targets/*.toml)")
    for col in ("name", "arch", "threads", "quant", "budgets"):
        table.add_column(col)
    for name in list_targets():
        t = load_target(name)
        q = t.quant
        scheme = f"W:{q.weights.dtype} {q.weights.granularity} / A:{q.activations.dtype} {q.activations.mode}"
        budgets = "\n".join(f"{k} {v}" for k, v in format_budgets(t))
        table.add_row(name, t.target.arch, str(t.runtime.intra_op_threads), scheme, budgets)
    Console().print(table)
    return 0


def _yaml(cfg) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def cmd_config(args) -> int:
    cfg, _ = _load(args)
    if not args.diff:
        sys.stdout.write(_yaml(cfg))
        return 0
    from .config import config_diff

    changes = config_diff(cfg)
    for key, default, value in changes:
        print(f"{key}: {json.dumps(default)} -> {json.dumps(value)}")
    if not changes:
        print("no differences from the shipped default", file=sys.stderr)
    return 0


def cmd_toy(args) -> int:
    import math

    from .config import COMMAND_LINE
    from .errors import InputError
    from .toyworld.build import WorldSpec, build_world

    if not (math.isfinite(args.scale) and 0 < args.scale <= 1):
        raise InputError(COMMAND_LINE, "--scale", f"{args.scale:g} is not a fraction in (0, 1] of the default world")
    spec = WorldSpec(seed=args.seed)
    if args.scale != 1.0:
        spec = spec.scaled(args.scale)
    info = build_world(args.out, spec)
    print(json.dumps({k: {"final_loss": v["final_loss"], "seconds": v["seconds"], "parameters": v["parameters"]}
                      for k, v in info.items() if k in ("teacher", "student")}, indent=2))
    print(f"built into {args.out}; use it with EDGE_TAILOR_WORLD={args.out}")
    return 0


class _UsageError(Exception):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if argv is None and args.command in ("run", *_stage_names()):
        _start_the_processes_accelerate_left_to_mpi()
    from .interrupts import signals_raise
    from .progress import library_output

    try:
        with signals_raise(), library_output(verbose=args.verbose):  # quiet by default: library output to <run>/log.txt
            return _dispatch(args)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (edge_tailor.interrupts)
        line, code = _interrupted_line(exc)
        print(line, file=sys.stderr)
        return code


def _stage_names() -> tuple[str, ...]:
    from .pipeline import STAGE_NAMES

    return STAGE_NAMES


def _start_the_processes_accelerate_left_to_mpi() -> None:
    from .distributed import cpu_launch_left_to_mpi
    from .errors import EXIT_BAD_INPUT, InputError

    try:
        command = cpu_launch_left_to_mpi()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if command:
        print(f"accelerate launch --cpu started one process (it leaves the others to MPI): starting "
              f"{command[command.index('--nproc_per_node') + 1]} with torchrun's launcher", file=sys.stderr)
        sys.stderr.flush()
        os.execv(command[0], command)


def _interrupted_line(exc: KeyboardInterrupt) -> tuple[str, int]:
    from .interrupts import Interrupted

    exc = exc if isinstance(exc, Interrupted) else Interrupted.from_exception(exc, None)
    signal_name = exc.args[0]
    if exc.stage is None:
        return f"interrupted ({signal_name}) outside any stage: run the same command again to go on", exc.exit_code
    return (f"interrupted ({signal_name}) in stage '{exc.stage}': what it had written was removed; run the same "
            f"command again to resume from {exc.stage} (finished stages are kept)"), exc.exit_code


def _dispatch(args) -> int:
    from .errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EnvironmentFailure, InputError
    from .pipeline import STAGE_NAMES

    handlers = {"run": cmd_run, "status": cmd_status, "targets": cmd_targets, "config": cmd_config, "toy": cmd_toy,
                "gate": cmd_gate, "verify": cmd_verify, "bench": cmd_bench, "report": cmd_report, "sign": cmd_sign,
                "keygen": cmd_keygen}
    handler = handlers.get(args.command) or (cmd_stage if args.command in STAGE_NAMES else None)
    try:
        return handler(args)
    except (InputError, _UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except EnvironmentFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except OSError as exc:  # disk full, read-only or unwritable folder, permission denied
        where = exc.filename if exc.filename is not None else None
        problem = exc.strerror or str(exc) or type(exc).__name__
        print(f"error: {where}: {problem}" if where else f"error: {problem}", file=sys.stderr)
        return EXIT_ENVIRONMENT


if __name__ == "__main__":
    sys.exit(main())
