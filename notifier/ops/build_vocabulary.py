"""Build the shipped MeSH vocabulary from the MeSH 2024 source files.

    python -m notifier.ops.build_vocabulary [--mesh DIR] [--out PATH]

Reads ``mesh2024_descriptors.tsv`` and ``mesh2024_scr_mapped_to_C_F03.tsv`` (see SOURCES.md in
the data directory) and writes ``notifier/core/mesh2024.vocab.json.gz``: every descriptor of the
C (Diseases) and F (Psychiatry and Psychology) trees with its tree numbers and terms, the
supplementary concepts mapped to them, the term index (keys made by ``normalize_term``), and the
name of every other descriptor. The same input gives byte-identical output.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notifier.core.vocabulary import (
    ACRONYMS,
    ADDED_EDGES,
    EXCLUDED_EDGES,
    FORMAT,
    GENERIC,
    KIND_ENTRY,
    KIND_INVERTED,
    KIND_LAY,
    KIND_NAME,
    KIND_PERMUTED,
    KIND_SCR,
    LAY_TERMS,
    NORMALIZATION,
    VOCAB_PATH,
    bag_key,
    family_key,
    normalize_term,
    uninvert,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_mesh() -> Path:
    """``../shared/data/mesh`` from the repo root; from a worktree, the nearest one further up."""
    for parent in REPO_ROOT.parents:
        candidate = parent / "shared" / "data" / "mesh"
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "data" / "mesh"


MESH_YEAR = 2024
SOURCE = "MeSH 2024, U.S. National Library of Medicine"
TREES = ("C", "F")
_ACRONYM_TERM = re.compile(r"^[A-Z][A-Z0-9]{1,5}$")
# "Alzheimer's Disease" -> "Alzheimer's": what people type for an eponymous disease
_EPONYM = re.compile(r"^([A-Z][a-z]+'s) (?:Disease|Syndrome)$")


@dataclass
class Row:
    ui: str
    name: str
    trees: list[str]
    entries: list[str]
    permuted: list[str]


def _split(value: str, sep: str = "|") -> list[str]:
    return [v.strip() for v in value.split(sep) if v.strip()]


def read_descriptors(path: Path) -> dict[str, Row]:
    csv.field_size_limit(1 << 30)
    rows: dict[str, Row] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for rec in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            rows[rec["ui"]] = Row(
                rec["ui"],
                rec["name"],
                _split(rec["tree_numbers"]),
                _split(rec["entry_terms"]),
                _split(rec["permuted_terms"]),
            )
    return rows


def read_scrs(path: Path) -> list[tuple[str, str, list[str], list[str]]]:
    out = []
    with path.open(encoding="utf-8", newline="") as fh:
        for rec in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            out.append(
                (rec["scr_ui"], rec["name"], _split(rec["synonyms"]), _split(rec["mapped_to"], ","))
            )
    return out


def build(mesh: Path) -> dict[str, Any]:
    rows = read_descriptors(mesh / "mesh2024_descriptors.tsv")
    scrs = read_scrs(mesh / "mesh2024_scr_mapped_to_C_F03.tsv")
    check_tables(rows)
    by_tree = {tree: row.ui for row in rows.values() for tree in row.trees}
    full: set[str] = set()
    for row in rows.values():
        for tree in row.trees:
            if tree.startswith(TREES):
                full.add(row.ui)
                parts = tree.split(".")
                for i in range(1, len(parts)):  # ancestors (already C/F, kept explicit)
                    full.add(by_tree[".".join(parts[:i])])

    # key -> (kind, uis, display): only the best-ranked meaning of a key is kept
    index: dict[str, tuple[int, set[str], str]] = {}
    acronyms: dict[str, set[str]] = {}

    def add(term: str, kind: int, uis: Iterable[str]) -> None:
        if _ACRONYM_TERM.match(term) and kind != KIND_NAME:
            acronyms.setdefault(term, set()).update(uis)
            return
        key = normalize_term(term)
        if not key:
            return
        have = index.get(key)
        if have is None or kind < have[0]:
            index[key] = (kind, set(uis), term)
        elif kind == have[0]:
            have[1].update(uis)

    for ui in sorted(full):
        row = rows[ui]
        for term in [row.name, *row.entries, *row.permuted]:
            eponym = _EPONYM.match(term)
            if eponym:
                add(eponym.group(1), KIND_LAY, [ui])
    for ui in sorted(full):
        row = rows[ui]
        add(row.name, KIND_NAME, [ui])
        for term in row.entries:
            add(term, KIND_ENTRY, [ui])
        for term in [row.name, *row.entries]:
            natural = uninvert(term)
            if natural:
                add(natural, KIND_INVERTED, [ui])
        for term in row.permuted:
            add(term, KIND_PERMUTED, [ui])
            natural = uninvert(term)
            if natural:
                add(natural, KIND_PERMUTED, [ui])
    scr_rows = []
    for scr_ui, name, synonyms, mapped in sorted(scrs):
        targets = sorted(u for u in mapped if u in full)
        if not targets:
            continue
        scr_rows.append([scr_ui, name, targets])
        for term in [name, *synonyms]:
            add(term, KIND_SCR, targets)
            natural = uninvert(term)
            if natural:
                add(natural, KIND_SCR, targets)

    family: dict[str, tuple[int, set[str], str]] = {}
    bags: dict[str, tuple[int, set[str], str]] = {}
    for key in sorted(index):
        kind, uis, display = index[key]
        if kind == KIND_SCR:
            continue
        fam = family_key(key)
        if fam != key and fam not in index:
            _merge(family, fam, kind, uis, display)
        _merge(bags, bag_key(key), kind, uis, display)
    bag_rows = [
        [b, kind, sorted(uis), display]
        for b, (kind, uis, display) in sorted(bags.items())
        if len(uis) == 1 and b not in index
    ]

    descriptors = [[ui, rows[ui].name, rows[ui].trees, rows[ui].entries] for ui in sorted(full)]
    names = {ui: row.name for ui, row in sorted(rows.items()) if ui not in full}
    return {
        "format": FORMAT,
        "normalization": NORMALIZATION,
        "source": SOURCE,
        "mesh_year": MESH_YEAR,
        "note": "Built by notifier.ops.build_vocabulary from MeSH 2024 (NLM); terms not altered, "
        "keys are normalised forms.",
        "descriptors": descriptors,
        "names": names,
        "scrs": scr_rows,
        "acronyms": [[a, sorted(uis)] for a, uis in sorted(acronyms.items())],
        "index": [[k, kind, sorted(uis), d] for k, (kind, uis, d) in sorted(index.items())],
        "family": [[k, kind, sorted(uis), d] for k, (kind, uis, d) in sorted(family.items())],
        "bag": bag_rows,
    }


def _merge(
    table: dict[str, tuple[int, set[str], str]], key: str, kind: int, uis: set[str], display: str
) -> None:
    have = table.get(key)
    if have is None or kind < have[0]:
        table[key] = (kind, set(uis), display)
    elif kind == have[0]:
        have[1].update(uis)


def check_tables(rows: dict[str, Row]) -> None:
    """Every curated UI exists in this MeSH year, under the heading the table says."""
    problems = []
    for acro in ACRONYMS:
        row = rows.get(acro.ui)
        if row is None or row.name != acro.heading:
            problems.append(f"acronym {acro.abbr}: {acro.ui} is {row.name if row else 'missing'}")
    for (child, parent), _why in EXCLUDED_EDGES.items():
        if child not in rows or parent not in rows:
            problems.append(f"excluded edge {child}->{parent}: unknown UI")
            continue
        parents = {t.rsplit(".", 1)[0] for t in rows[child].trees if "." in t}
        if not parents & set(rows[parent].trees):
            problems.append(f"excluded edge {child}->{parent}: not an edge in MeSH")
    for ui, why in GENERIC.items():  # each reason starts with the heading
        if ui not in rows or not why.startswith(rows[ui].name):
            problems.append(f"generic {ui}: is {rows[ui].name if ui in rows else 'missing'}")
    for ui in {ui for uis in LAY_TERMS.values() for ui in uis} | {
        ui for edge in ADDED_EDGES for ui in edge
    }:
        if ui not in rows:
            problems.append(f"{ui}: unknown UI")
    if problems:
        raise SystemExit("curated tables disagree with MeSH:\n  " + "\n  ".join(problems))


def write(data: dict[str, Any], out: Path) -> None:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notifier.ops.build_vocabulary")
    parser.add_argument(
        "--mesh", type=Path, default=None, help="MeSH source directory (../shared/data/mesh)"
    )
    parser.add_argument("--out", type=Path, default=VOCAB_PATH, help="vocabulary file to write")
    args = parser.parse_args(argv)
    data = build(args.mesh or default_mesh())
    write(data, args.out)
    sys.stderr.write(
        f"{args.out}: {len(data['descriptors'])} descriptors, {len(data['scrs'])} SCRs, "
        f"{len(data['index'])} keys, {len(data['names'])} other names, "
        f"{args.out.stat().st_size:,} bytes\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
