"""README.md and docs/ as a user reads them: every command they show is one that exists.

- Each shell block (```bash, sh, shell, console; and the `run:` steps of a CI job in a ```yaml block)
  is split into commands. A `tailor ...` (or `python -m edge_tailor.cli ...`) command is parsed by the
  CLI's own parser, so a subcommand, flag or missing argument the CLI does not have fails; its
  `key=value` overrides and `--config` file are loaded as a run config, `--target` must name a shipped
  target or a file, `--only` / `--force` a stage. A `python -m edge_tailor.X` (or `python some/script.py`)
  command must name a module (script) that exists, and each `--flag` it passes must be one that module
  defines (a bundle's `edge_runtime.py` is `export/runtime.py`).
- Each file path a command names must exist in the repository, except paths the same block creates
  (`cp`/`mv` targets, `mkdir`, `--out`), run outputs (`runs/`) and the Quick start's virtual environment
  (`.venv/`), absolute paths and `~` / `$VAR` paths (the user's own). A file a documentation block
  itself defines (a block whose first line is `# NAME...`, e.g. `# my.yaml`) counts as existing, and a
  command's `--config NAME` loads that block. Paths under `../shared/` are checked against the
  `shared/` folder beside the repository, which the recipes read their data from; only where that
  folder is absent (a lone clone) are they skipped.
- Every other ```yaml block is a run config and must load (`edge_tailor.config.load_config`).
- README.md stays a one-page guide: at most 250 lines, at most 2 UTC timestamps, the Quick start's two
  lines as `.ci/run` relies on them, a link to benchmarks/RESULTS.md, and its headline table the one
  `python -m edge_tailor.benchmarks.headline` builds from RESULTS.md (entries newest first).
- The generated pages (docs/cli.md from `tailor --help`, docs/config.md from RunConfig) are current.
- The import graph of the package has no cycle (ARCHITECTURE.md: each layer imports only downward;
  `tasks.answers` and `tasks.base` imported each other until issue #29).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from edge_tailor.benchmarks import headline
from edge_tailor.cli import build_parser
from edge_tailor.config import load_config
from edge_tailor.errors import InputError
from edge_tailor.pipeline import STAGE_NAMES
from edge_tailor.target import list_targets

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
MADE_BY_RUNS = ("runs/", ".venv/", ".venv-edge/")  # run outputs; the Quick start's environments
OPERATORS = {";", "&&", "||", "|", "&", "(", ")"}
_FENCE = re.compile(r"^(```|~~~)([\w-]*)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
_PATHLIKE = re.compile(r"^(?:\.{1,2}/|[\w.-]+/)[\w./@+-]*$|^[\w.-]+\.(?:ya?ml|toml|jsonl?|txt|py|md|gguf|onnx|sh)$")
_ENV = re.compile(r"^[A-Za-z_]\w*=")
RUNTIME = ROOT / "export" / "runtime.py"  # ships in every bundle as edge_runtime.py
PACKAGE_DIRS = {"edge_tailor.benchmarks": ROOT / "benchmarks", "edge_tailor.export": ROOT / "export",
                "edge_tailor": ROOT / "toolkit"}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


@dataclass
class Context:
    """What a block's earlier commands made, and the files the documentation itself defines."""

    documented: dict[str, str] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)


def blocks(pages=PAGES) -> list[Block]:
    out = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            out.append(Block(page, text.count("\n", 0, m.start()) + 1, m[2].lower(), m[3]))
    return out


def documented_files(found: list[Block]) -> dict[str, str]:
    """Files a block defines by naming itself on its first line (`# my.yaml: ...`)."""
    out = {}
    for b in found:
        m = re.match(r"#\s*([\w./-]+\.(?:ya?ml|toml))\b", b.text)
        if m:
            out[m[1]] = b.text
    return out


def ci_steps(block: Block) -> list[str]:
    """The shell of each `run:` step of a CI job (GitHub Actions' jobs.<job>.steps)."""
    data = yaml.safe_load(block.text)
    return [step["run"] for job in data["jobs"].values() for step in job.get("steps", []) if "run" in step]


def is_ci_job(block: Block) -> bool:
    return block.lang in ("yaml", "yml") and re.search(r"^jobs:", block.text, re.M) is not None


def logical_lines(text: str) -> list[str]:
    """Shell lines with continuations joined and quoted newlines kept inside their command."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw[2:] if raw.startswith("$ ") else raw
        buf = f"{buf}\n{line}" if buf else line
        if buf.endswith("\\"):
            buf = buf[:-1]
            continue
        try:
            shlex.split(buf, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        if buf.strip():
            out.append(buf)
        buf = ""
    assert not buf.strip(), f"unterminated shell line: {buf!r}"
    return out


def commands(text: str) -> list[list[str]]:
    out = []
    for line in logical_lines(text):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in OPERATORS:
                out.append(current)
                current = []
            else:
                current.append(token)
        out.append(current)
    return [c for c in out if c]


def _parse_tailor(args: list[str]) -> tuple[object | None, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(args), ""
        except SystemExit as exc:
            if exc.code == 0:  # --help
                return None, ""
            return None, err.getvalue().strip().splitlines()[-1]


def _exists(path: str, ctx: Context) -> bool:
    norm = path.removeprefix("./")
    if norm in ctx.documented or any(norm == c or norm.startswith(c.rstrip("/") + "/") for c in ctx.created):
        return True
    return (ROOT / norm).exists()


def check_tailor(args: list[str], ctx: Context) -> list[str]:
    ns, error = _parse_tailor(args)
    if error:
        return [f"`tailor {' '.join(args)}`: {error}"]
    if ns is None:
        return []
    problems = []
    target = getattr(ns, "target", None)
    if target and target not in list_targets() and not _exists(target, ctx):
        problems.append(f"`tailor {' '.join(args)}`: --target {target}: no shipped target and no such file")
    for option in ("only", "force"):
        names = getattr(ns, option, None)
        for name in names if isinstance(names, list) else []:
            if name not in STAGE_NAMES:
                problems.append(f"`tailor {' '.join(args)}`: --{option} {name}: not a stage")
    if hasattr(ns, "overrides"):  # run, config show: the config file and the overrides must load
        problems += _load_config(ns.config, list(ns.overrides), ctx, f"`tailor {' '.join(args)}`")
    if ns.command == "run" and getattr(ns, "out", None):
        ctx.created.add(ns.out)
    return problems


def _load_config(config: str | None, overrides: list[str], ctx: Context, what: str) -> list[str]:
    """load_config on a file of the repository, one a documentation block defines, or the default; a file
    that is missing is the path check's to report, one a block made is not in the repository to read."""
    name = (config or "").removeprefix("./")
    with tempfile.TemporaryDirectory() as tmp:
        if name in ctx.documented:
            path = Path(tmp) / Path(name).name
            path.write_text(ctx.documented[name], encoding="utf-8")
        elif config and (ROOT / name).is_file():
            path = ROOT / name
        elif config:
            return []
        else:
            path = None
        try:
            load_config(path, overrides)
        except InputError as exc:
            return [f"{what}: {exc}"]
    return []


def _defined_flags(source: Path) -> set[str]:
    return set(re.findall(r"""["'](--[\w-]+)["']""", source.read_text(encoding="utf-8")))


def _module_file(module: str) -> Path | None:
    for package, folder in PACKAGE_DIRS.items():
        if module == package or module.startswith(package + "."):
            rest = module[len(package):].lstrip(".").split(".") if module != package else []
            base = folder.joinpath(*rest)
            for candidate in (base.with_suffix(".py"), base / "__main__.py", base / "__init__.py"):
                if rest and candidate.is_file():
                    return candidate
            return None
    return None


def check_script(name: str, source: Path | None, args: list[str]) -> list[str]:
    if source is None:
        return [f"`{name}`: no such module or script in the repository"]
    defined = _defined_flags(source)
    return [f"`{name} {' '.join(args)}`: {flag} is not a flag of {source.relative_to(ROOT)}"
            for flag in (a.split("=")[0] for a in args if a.startswith("--")) if flag not in defined]


def _path_candidates(tokens: list[str]) -> list[str]:
    out = []
    for token in tokens:
        value = token.split("=", 1)[1] if "=" in token and not token.startswith("=") else token
        if value.startswith(("/", "~", "$")) or ":" in value or "<" in value or "*" in value:
            continue
        if _PATHLIKE.match(value) and not value.startswith(MADE_BY_RUNS):
            out.append(value)
    return out


def check_command(tokens: list[str], ctx: Context) -> list[str]:
    while tokens and _ENV.match(tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return []
    program, args = Path(tokens[0]).name, tokens[1:]
    problems = []
    if program == "tailor":
        problems += check_tailor(args, ctx)
    elif program.startswith("python") and args[:1] == ["-m"] and len(args) > 1:
        module, rest = args[1], args[2:]
        if module == "edge_tailor.cli":
            problems += check_tailor(rest, ctx)
        elif module.startswith("edge_tailor"):
            problems += check_script(f"python -m {module}", _module_file(module), rest)
        elif module == "venv" and rest:
            ctx.created.add(rest[-1])
    elif program.startswith("python") and args and Path(args[0]).name == "edge_runtime.py":
        problems += check_script(f"python {args[0]}", RUNTIME, args[1:])  # a bundle's copy of export/runtime.py
    elif program.startswith("python") and args and args[0].endswith(".py") and (ROOT / args[0]).is_file():
        problems += check_script(f"python {args[0]}", ROOT / args[0], args[1:])
    elif program in ("cp", "mv", "mkdir") and args:
        ctx.created.update(a for a in (args[-1:] if program in ("cp", "mv") else args) if not a.startswith("-"))
    for path in _path_candidates(tokens[1:]):
        norm = path.removeprefix("./")
        if norm.startswith("../shared/") and not SHARED.is_dir():
            continue  # a lone clone without the shared data folder beside it
        if not _exists(path, ctx):
            problems.append(f"`{' '.join(tokens)}`: {path}: no such file in the repository")
    return problems


def check_blocks(found: list[Block], documented: dict[str, str] | None = None) -> list[str]:
    documented = documented_files(found) if documented is None else documented
    problems = []
    for b in found:
        if b.lang in SHELL or is_ci_job(b):
            ctx = Context(documented=documented)
            for text in ci_steps(b) if is_ci_job(b) else [b.text]:
                for tokens in commands(text):
                    problems += [f"{b.where}: {p}" for p in check_command(tokens, ctx)]
        elif b.lang in ("yaml", "yml"):  # a run config
            problems += _load_config("block.yaml", [], Context(documented={"block.yaml": b.text}),
                                     f"{b.where}: the config block")
    return problems


# ---------------------------------------------------------------------------------------------------------


def test_every_command_in_the_readme_and_docs_exists():
    found = blocks()
    shell = [b for b in found if b.lang in SHELL or is_ci_job(b)]
    assert len(shell) >= 8 and any(b.page.name == "README.md" for b in shell)
    assert check_blocks(found) == []


def test_a_wrong_command_fails_the_check(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\n"
                    "tailor rnu\n"                                      # no such subcommand
                    "tailor run --fast\n"                               # no such flag
                    "tailor run --config configs/nope.yaml\n"           # no such file
                    "tailor run distill.lora.rank=8\n"                  # no such config key
                    "tailor run --target pdp-11 --only distil\n"        # no such target, no such stage
                    "tailor gate\n"                                     # a required argument left out
                    "python -m edge_tailor.benchmarks.peers --speed 2\n"  # no such flag of the module
                    "python -m edge_tailor.benchmarks.nothing\n"        # no such module
                    "cat configs/missing.yaml targets/ci-x86.toml\n"    # a missing path (the second exists)
                    "cp targets/ci-x86.toml mine.toml && tailor run --target ./mine.toml\n"  # made: fine
                    "```\n"
                    "```yaml\n# demo.yaml\nteacher: {pth: x}\n```\n")
    problems = check_blocks(blocks([page]))
    expected = ["tailor rnu", "--fast", "configs/nope.yaml", "rank", "pdp-11", "--only distil", "tailor gate",
                "--speed", "edge_tailor.benchmarks.nothing", "configs/missing.yaml", "pth"]
    for needle in expected:
        assert any(needle in p for p in problems), (needle, problems)
    assert len(problems) == len(expected), problems


def test_shell_lines_are_split_as_a_shell_would():
    text = ('A=1 tailor run --out /tmp/x && .venv/bin/python -m pytest -q  # a comment\n'
            'python x.py --prompt "two\nlines" \\\n  --flag\n')
    assert commands(text) == [["A=1", "tailor", "run", "--out", "/tmp/x"], [".venv/bin/python", "-m", "pytest", "-q"],
                              ["python", "x.py", "--prompt", "two\nlines", "--flag"]]


def test_the_readme_is_a_one_page_guide():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert len(re.findall(r"\bUTC\b", text)) <= 2
    assert "(benchmarks/RESULTS.md)" in text
    quick = re.search(r"## Quick start\n\n```bash\n(.*?)```", text, re.S)[1].splitlines()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert quick[0] == ('python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && '
                        '.venv/bin/pip install -q -e ".[dev]" && .venv/bin/tailor run')
    assert quick[1] == ".venv/bin/python -m pytest -q" and quick[1] in ci


def test_the_headline_table_is_built_from_the_results_file():
    results = (ROOT / headline.RESULTS).read_text(encoding="utf-8")
    found = headline.entries(results)
    assert headline.out_of_order(found) == [], "benchmarks/RESULTS.md must list entries newest first"
    rows = headline.newest_headlines(found)
    assert {"default", "smollm2"} <= {e.recipe for e in rows}
    for e in rows:
        assert (ROOT / "configs" / f"{e.recipe}.yaml").is_file(), e.recipe
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert headline.render(readme, results) == readme, \
        "README.md's headline table is stale: run `python -m edge_tailor.benchmarks.headline`"
    assert headline.main(["--check"]) == 0


def test_the_headline_script_takes_the_newest_entry_of_each_recipe():
    def entry(id_, recipe, date, figure=None):
        head = f'\nheadline:\n  verdict: "{figure}"' if figure else ""
        return (f'<a id="{id_}"></a>\n### {id_}\n\n```yaml\nid: {id_}\nrecipe: {recipe}\ndate: "{date}"\n'
                f'commit: abc1234\ncpu: "a CPU (flags)"\ncommand: tailor run{head}\n```\n\n')
    text = (entry("new-a", "smollm2-arte", "2026-12-08 10:00 UTC", "PASSED, 61 min")
            + entry("no-figures", "default", "2026-12-07 09:00 UTC")
            + entry("old-d", "default", "2026-12-02 10:12 UTC", "PASSED, 9 min 33 s")
            + entry("older-a", "smollm2-arte", "2026-12-01 10:00 UTC", "FAILED"))
    found = headline.entries(text)
    assert headline.out_of_order(found) == []
    assert [e.fields["id"] for e in headline.newest_headlines(found)] == ["old-d", "new-a"]
    table = headline.table(found)
    assert "PASSED, 61 min" in table and "FAILED" not in table and "[`smollm2-arte`]" in table
    assert headline.out_of_order(list(reversed(found)))  # oldest first is refused


def test_the_arte_table_keeps_the_newest_run_of_each_task_and_refuses_an_incomplete_row():
    def entry(id_, date, task, difference, drop=None):
        arte = {"task": task, "n": "300 (3 x 100)", "original": "40.0%", "aligned": "45.0%",
                "gold": "60.0% (solver)", "difference": difference, "minutes": "baseline 8"}
        arte.pop(drop, None)
        block = "".join(f'\n  {k}: "{v}"' for k, v in arte.items())
        return (f'<a id="{id_}"></a>\n### {id_}\n\n```yaml\nid: {id_}\nrecipe: smollm2-arte\ndate: "{date}"\n'
                f'commit: abc1234\ncpu: "a CPU (flags)"\ncommand: tailor run\narte:{block}\n```\n\n')
    text = (entry("b-new", "2026-12-08 10:00 UTC", "boolean_expressions", "+5.0 [+1.0, +9.0]")
            + entry("l-only", "2026-12-07 12:00 UTC", "logical_deduction_three_objects", "-1.0 [-4.0, +2.0]")
            + entry("b-old", "2026-12-07 09:00 UTC", "boolean_expressions", "+0.0 [-3.0, +3.0]"))
    found = headline.entries(text)
    assert [e.fields["id"] for e in headline.newest_arte(found)] == ["b-new", "l-only"]
    table = headline.arte_table(found)
    assert "+5.0 [+1.0, +9.0]" in table and "-1.0 [-4.0, +2.0]" in table and "+0.0 [-3.0" not in table
    readme = f"a\n{headline.ARTE_BEGIN}\nstale\n{headline.ARTE_END}\nb\n{headline.BEGIN}\n{headline.END}\n"
    rendered = headline.render(readme, text)
    assert "stale" not in rendered and table in rendered and rendered.endswith(f"{headline.END}\n")
    with pytest.raises(headline.ResultsError, match="gold"):
        headline.entries(entry("no-gold", "2026-12-08 10:00 UTC", "boolean_expressions", "+1 [0, 2]", drop="gold"))


def test_generated_docs_are_current():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for name in generate.PAGES:
        old, new = generate.render(name)
        assert old == new, f"docs/{name} is stale: run `python docs/generate.py`"


def test_markdown_links_resolve():
    missing = []
    for page in [*PAGES, ROOT / "benchmarks" / "RESULTS.md", ROOT / "ARCHITECTURE.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            path = target.split("#")[0]
            if path and "://" not in path and not (page.parent / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert missing == []


def test_every_target_field_is_in_the_targets_page():
    from edge_tailor.target import Target

    def leaves(model, prefix=""):
        for name, f in model.model_fields.items():
            inner = [a for a in (getattr(f.annotation, "__args__", None) or (f.annotation,))
                     if isinstance(a, type) and hasattr(a, "model_fields")]
            yield from leaves(inner[0], f"{prefix}{name}.") if inner else [f"{prefix}{name}"]

    rows = [r for r in (ROOT / "docs" / "targets.md").read_text(encoding="utf-8").splitlines() if r.startswith("| `")]
    missing = [p for p in leaves(Target) if not any(
        f"`{p}`" in r or (f"`{p.rpartition('.')[0]}." in r and f".{p.rpartition('.')[2]}`" in r) for r in rows)]
    assert missing == []


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            out |= {source} | {f"{source}.{a.name}" for a in node.names}
    return out


def test_the_package_imports_without_a_cycle():
    mods = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            mods[".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    graph = {m: {t for t in _imports(p, m) if t in mods and t != m} for m, p in mods.items()}
    assert "edge_tailor.tasks.answers" in graph["edge_tailor.tasks.base"]
    assert not graph["edge_tailor.tasks.answers"] & {m for m in mods if m.startswith("edge_tailor.tasks")}

    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], cycles


@pytest.mark.parametrize("page", [p.name for p in PAGES])
def test_every_page_has_a_title(page):
    first = next(p for p in PAGES if p.name == page).read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ")
