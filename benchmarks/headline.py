"""The README's headline table, built from benchmarks/RESULTS.md (never edited by hand).

    python -m edge_tailor.benchmarks.headline            # rewrite the table in README.md
    python -m edge_tailor.benchmarks.headline --check    # exit 1 when README.md's table is not RESULTS.md's
    python -m edge_tailor.benchmarks.headline --print    # the table alone, on stdout

RESULTS.md is a log of measured runs, newest first. Each entry opens with `<a id="ID"></a>`, a heading
and one fenced YAML block: `id`, `recipe` (a config under configs/), `date` ("YYYY-MM-DD HH:MM... UTC"),
`commit`, `cpu`, `command`, and, on runs that stand for their recipe, `headline:` with the figures as
measured, written as text and copied into the table verbatim. The table has one row per recipe with
an entry: the newest entry that has `headline:` (a recipe without one has no row).

The README's ARTE table ("Real models") is built the same way from entries with an `arte:` block (the
ablation of one run on one task: arms, interval, gold, stage minutes): one row per (recipe, task), the newest.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/RESULTS.md"
BEGIN = "<!-- headline table: built by `python -m edge_tailor.benchmarks.headline` from benchmarks/RESULTS.md; " \
        "do not edit by hand -->"
END = "<!-- end of headline table -->"
REQUIRED = ("id", "recipe", "date", "commit", "cpu", "command")
# (column title, headline key); a key an entry does not give renders as "-"
COLUMNS = (
    ("student before -> after", ("student_before", "student_after")),
    ("ARTE ablation: original / aligned / gold", ("ablation",)),
    ("aligned - original [95%]", ("ablation_difference",)),
    ("shipped vs fp32: top-1, KL", ("fidelity",)),
    ("size", ("size",)),
    ("ms/token p50 (x PyTorch fp32)", ("ms_per_token",)),
    ("verdict, wall time", ("verdict",)),
)
HEADLINE_KEYS = frozenset(k for _, keys in COLUMNS for k in keys)
ARTE_BEGIN = "<!-- ARTE table: built by `python -m edge_tailor.benchmarks.headline` from benchmarks/RESULTS.md; " \
             "do not edit by hand -->"
ARTE_END = "<!-- end of ARTE table -->"
# (column title, arte key): every key is required, an ARTE row without one would read as a result it is not
ARTE_COLUMNS = (
    ("task", "task"),
    ("pairs (seeds x test questions)", "n"),
    ("original teacher's data", "original"),
    ("aligned teacher's data", "aligned"),
    ("gold (which)", "gold"),
    ("aligned - original [95%]", "difference"),
    ("minutes per stage", "minutes"),
)
ARTE_KEYS = tuple(k for _, k in ARTE_COLUMNS)
_FENCE = re.compile(r"^```yaml\n(.*?)^```$", re.S | re.M)
_EXAMPLE = re.compile(r"^~~~.*?^~~~$", re.S | re.M)  # a ~~~ block shows the shape of an entry: not one
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[ T](\d{1,2}):(\d{2}))?")


@dataclass(frozen=True)
class Entry:
    fields: dict
    line: int  # where its YAML block starts in RESULTS.md (1-based)

    @property
    def recipe(self) -> str:
        return self.fields["recipe"]

    @property
    def when(self) -> tuple[str, int]:
        """(day, minutes since midnight) of the start; an entry with a day only counts as its first minute."""
        m = _DATE.match(self.fields["date"])
        return m[1], (int(m[2]) * 60 + int(m[3])) if m[2] else 0


class ResultsError(ValueError):
    pass


def entries(text: str, source: str = RESULTS) -> list[Entry]:
    """Every entry of RESULTS.md in file order, its fields checked."""
    out = []
    blanked = _EXAMPLE.sub(lambda m: "\n" * m[0].count("\n"), text)
    for m in _FENCE.finditer(blanked):
        line = blanked.count("\n", 0, m.start()) + 1
        try:
            fields = yaml.safe_load(m[1])
        except yaml.YAMLError as exc:
            raise ResultsError(f"{source}: line {line}: not valid YAML: {exc}") from None
        if not isinstance(fields, dict) or "recipe" not in fields:
            continue  # a YAML example in the prose, not an entry
        missing = [k for k in REQUIRED if not fields.get(k)]
        if missing:
            raise ResultsError(f"{source}: line {line}: entry lacks {', '.join(missing)}")
        fields = {k: (v if isinstance(v, dict) else str(v)) for k, v in fields.items()}
        if not _DATE.match(fields["date"]):
            raise ResultsError(f"{source}: line {line}: date {fields['date']!r} does not start YYYY-MM-DD")
        if f'<a id="{fields["id"]}"></a>' not in text:
            raise ResultsError(f"{source}: line {line}: no anchor <a id=\"{fields['id']}\"></a> for the entry")
        headline = fields.get("headline")
        if headline is not None:
            if not isinstance(headline, dict):
                raise ResultsError(f"{source}: line {line}: headline must be a mapping")
            unknown = sorted(set(headline) - HEADLINE_KEYS)
            if unknown:
                raise ResultsError(f"{source}: line {line}: unknown headline key(s) {', '.join(unknown)} "
                                   f"(known: {', '.join(sorted(HEADLINE_KEYS))})")
            fields["headline"] = {k: str(v) for k, v in headline.items()}
        arte = fields.get("arte")
        if arte is not None:
            if not isinstance(arte, dict):
                raise ResultsError(f"{source}: line {line}: arte must be a mapping")
            wrong = sorted(set(arte) ^ set(ARTE_KEYS))
            if wrong:
                raise ResultsError(f"{source}: line {line}: arte must have exactly the keys {', '.join(ARTE_KEYS)} "
                                   f"(wrong: {', '.join(wrong)})")
            fields["arte"] = {k: str(v) for k, v in arte.items()}
        out.append(Entry(fields, line))
    ids = [e.fields["id"] for e in out]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ResultsError(f"{source}: entry id(s) used twice: {', '.join(twice)}")
    return out


def out_of_order(found: list[Entry]) -> list[str]:
    """Entries that stand above an older one's successor: RESULTS.md is newest first."""
    return [f"line {b.line} ({b.fields['id']}, {b.fields['date']}) is newer than line {a.line} "
            f"({a.fields['id']}, {a.fields['date']}) above it"
            for a, b in zip(found, found[1:]) if b.when > a.when]


def newest_headlines(found: list[Entry]) -> list[Entry]:
    """Per recipe, the newest entry with headline figures: default first, then by recipe name."""
    best: dict[str, Entry] = {}
    for e in found:
        if "headline" in e.fields and (e.recipe not in best or e.when > best[e.recipe].when):
            best[e.recipe] = e
    return [best[r] for r in sorted(best, key=lambda r: (r != "default", r))]


def newest_arte(found: list[Entry]) -> list[Entry]:
    """Per (recipe, task), the newest entry with an ARTE ablation, by recipe then task."""
    best: dict[tuple[str, str], Entry] = {}
    for e in found:
        if "arte" in e.fields:
            key = (e.recipe, e.fields["arte"]["task"])
            if key not in best or e.when > best[key].when:
                best[key] = e
    return [best[k] for k in sorted(best)]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def table(found: list[Entry]) -> str:
    head = ["recipe"] + [title for title, _ in COLUMNS] + ["measured on: CPU; commit, date"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for e in newest_headlines(found):
        f, h = e.fields, e.fields["headline"]
        cells = [f"[`{e.recipe}`](configs/{e.recipe}.yaml)" + (f" on `{f['target']}`" if f.get("target") else "")]
        for _, keys in COLUMNS:
            values = [h[k] for k in keys if k in h]
            cells.append(" -> ".join(values) if values else "-")
        cpu = f["cpu"].split(" (")[0]  # the model; its kernel flags are in the entry
        cells.append(f"{cpu}; [{f['commit'].split()[0]}, {f['date'][:10]}]({RESULTS}#{f['id']})")
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)


def arte_table(found: list[Entry]) -> str:
    head = ["recipe"] + [title for title, _ in ARTE_COLUMNS] + ["measured on: CPU; commit, date"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for e in newest_arte(found):
        f, a = e.fields, e.fields["arte"]
        cells = [f"[`{e.recipe}`](configs/{e.recipe}.yaml)"] + [a[k] for k in ARTE_KEYS]
        cells.append(f"{f['cpu'].split(' (')[0]}; [{f['commit'].split()[0]}, {f['date'][:10]}]({RESULTS}#{f['id']})")
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)


def _replace(readme: str, begin: str, end: str, body: str, what: str) -> str:
    start, stop = readme.find(begin), readme.find(end)
    if start < 0 or stop < start:
        raise ResultsError(f"README.md: the markers of the {what} are missing ({begin} ... {end})")
    return readme[: start + len(begin)] + "\n" + body + "\n" + readme[stop:]


def render(readme: str, results: str) -> str:
    """README.md's text with the headline and ARTE tables replaced by the ones RESULTS.md gives."""
    found = entries(results)
    readme = _replace(readme, BEGIN, END, table(found), "headline table")
    return _replace(readme, ARTE_BEGIN, ARTE_END, arte_table(found), "ARTE table")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_tailor.benchmarks.headline",
                                     description="Build README.md's headline table from benchmarks/RESULTS.md.")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this checkout)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when README.md's table is not current")
    mode.add_argument("--print", action="store_true", help="print the table instead of writing README.md")
    args = parser.parse_args(argv)
    readme_path = args.root / "README.md"
    results = (args.root / RESULTS).read_text(encoding="utf-8")
    try:
        found = entries(results)
        problems = out_of_order(found)
        if problems:
            raise ResultsError(f"{RESULTS}: not newest first: " + "; ".join(problems))
        if args.print:
            print(table(found) + "\n\n" + arte_table(found))
            return 0
        readme = readme_path.read_text(encoding="utf-8")
        new = render(readme, results)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != readme:
            print("README.md: the headline table is not the one benchmarks/RESULTS.md gives; run "
                  "`python -m edge_tailor.benchmarks.headline`", file=sys.stderr)
            return 1
        return 0
    if new != readme:
        readme_path.write_text(new, encoding="utf-8")
        print(f"wrote the headline table into {readme_path} ({len(newest_headlines(found))} recipes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
