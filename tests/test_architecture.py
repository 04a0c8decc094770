"""Import rules of ARCHITECTURE.md, checked on the source with `ast` (nothing is imported).

- a stage module (toolkit/stages/*.py) imports no other stage: shared code lives in named modules;
- outside toolkit/stages only the registry (toolkit/pipeline.py) imports `edge_tailor.stages`
  (tests may, they are not scanned);
- `benchmarks/peers.py` is a script: nothing in toolkit/, export/ or benchmarks/ imports it
  (its engines are in benchmarks/engines.py, its hardware probes in benchmarks/hardware.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"toolkit": "edge_tailor", "export": "edge_tailor.export", "benchmarks": "edge_tailor.benchmarks"}
STAGES = "edge_tailor.stages"
PEERS = "edge_tailor.benchmarks.peers"
REGISTRY = "edge_tailor.pipeline"
# (importer, imported) pairs not yet moved; each must still exist (see test_known_exceptions_are_still_needed)
KNOWN: set[tuple[str, str]] = set()  # (module, stage) pairs allowed for now: none


def modules() -> dict[str, Path]:
    """Every module of the three packages by its import name (export/ and benchmarks/ sit inside toolkit's
    namespace, so toolkit/export would never be a real path)."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imported(name: str, path: Path) -> set[str]:
    """Absolute names of what a module imports; `from x import y` counts as x and as x.y (y may be a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            out.add(source)
            out |= {f"{source}.{alias.name}" for alias in node.names}
    return out


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def outermost(names) -> list[str]:
    """`from .align import load_teacher` gives x and x.load_teacher: report x once."""
    names = set(names)
    return sorted(n for n in names if not any(n.startswith(o + ".") for o in names))


def stage_imports(targets: set[str]) -> list[str]:
    """The stage modules among `targets` (`from . import align` also names the package itself: not a stage)."""
    inner = outermost(t for t in targets if within(t, STAGES) and t != STAGES)
    return inner or ([STAGES] if STAGES in targets else [])


def imports() -> dict[str, set[str]]:
    return {name: imported(name, path) for name, path in modules().items()}


def test_the_scan_sees_the_packages():
    found = imports()
    assert {f"{STAGES}.align", REGISTRY, PEERS, "edge_tailor.export.runtime"} <= set(found)
    assert "edge_tailor.generation" in found["edge_tailor.evaluate"]  # relative imports resolve


def test_every_spelling_of_a_stage_import_resolves(tmp_path):
    module = tmp_path / "x.py"
    module.write_text("from . import align\nfrom ..stages import elicit\nimport edge_tailor.stages.prefer\n"
                      "def f():\n    from .generate import TEACHERS\n")
    found = stage_imports(imported(f"{STAGES}.x", module))
    assert found == [f"{STAGES}.{s}" for s in ("align", "elicit", "generate", "prefer")]


def test_stages_import_no_other_stage():
    bad = []
    for name, targets in imports().items():
        if within(name, STAGES) and name != STAGES:
            bad += [f"{name} imports {t}" for t in stage_imports(targets) if t not in (STAGES, name)]
    assert not bad, "a stage imports another stage; move the shared code to a library module:\n" + "\n".join(bad)


def test_only_the_registry_imports_stages():
    bad = []
    for name, targets in imports().items():
        if within(name, STAGES) or name == REGISTRY:
            continue
        bad += [f"{name} imports {t}" for t in stage_imports(targets) if (name, t) not in KNOWN]
    assert not bad, "only edge_tailor.pipeline (the registry) may import stages:\n" + "\n".join(bad)


def test_nothing_imports_the_peers_script():
    bad = [f"{name} imports {PEERS}" for name, targets in imports().items()
           if name != PEERS and any(within(t, PEERS) for t in targets)]
    assert not bad, "benchmarks/peers.py is a script; import benchmarks.engines / benchmarks.hardware:\n" + \
        "\n".join(bad)


def test_known_exceptions_are_still_needed():
    found = imports()
    stale = [pair for pair in KNOWN if pair[1] not in found.get(pair[0], set())]
    assert not stale, f"no longer imported: drop from KNOWN: {stale}"
