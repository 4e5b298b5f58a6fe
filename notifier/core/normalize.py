"""Normalisation shared by signup and matching: NCT ids, MeSH ids, condition text."""

from __future__ import annotations

import re
import unicodedata

# [0-9], never \d: \d also matches Arabic-Indic and fullwidth digits, which Python's int()
# reads, so "NCT0587997٨" would be stored and never match anything.
NCT_RE = re.compile(r"^NCT[0-9]{8}$")
MESH_RE = re.compile(r"^([DC])([0-9]{6}|[0-9]{9})$")
ASCII_SPACE = " \t\r\n\f\v"
# The NCT ids the server accepts, as JSON Schema says it (spec and server must agree).
_SPACES = "[ \\t\\r\\n\\f\\v]*"
NCT_PATTERN = f"^{_SPACES}[Nn][Cc][Tt][0-9]{{8}}{_SPACES}$"
MESH_PATTERN = f"^{_SPACES}[DdCc]([0-9]{{6}}|[0-9]{{9}}){_SPACES}$"
_PUNCT_OR_SPACE = re.compile(r"[\W_]+", re.UNICODE)
_PARENS = re.compile(r"\(([^()]*)\)")

CONDITION_MIN, CONDITION_MAX = 2, 200


def normalize_nct(value: str) -> str | None:
    """'nct05879978 ' -> 'NCT05879978'; None when it is not an NCT id."""
    candidate = value.strip(ASCII_SPACE).upper()
    return candidate if NCT_RE.match(candidate) else None


def normalize_mesh_id(value: str) -> str | None:
    """MeSH UIs come as D055752 and as D000055752: both become D000055752."""
    match = MESH_RE.match(value.strip(ASCII_SPACE).upper())
    if not match:
        return None
    letter, digits = match.groups()
    return f"{letter}{int(digits):09d}"


def normalize_condition(value: str) -> str:
    """Fold case, accents, punctuation, spaces: 'Non-Small-Cell  Lung' -> 'non small cell lung'."""
    text = unicodedata.normalize("NFKD", value)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return _PUNCT_OR_SPACE.sub(" ", text.casefold()).strip()


def condition_keys(value: str) -> set[str]:
    """Every normalised form a condition text stands for.

    'Small Cell Lung Carcinoma (SCLC)' -> {'small cell lung carcinoma sclc',
    'small cell lung carcinoma', 'sclc'}: registries put acronyms in parentheses.
    """
    keys = {normalize_condition(value)}
    outside = _PARENS.sub(" ", value)
    keys.add(normalize_condition(outside))
    for inside in _PARENS.findall(value):
        keys.add(normalize_condition(inside))
    return {k for k in keys if len(k) >= CONDITION_MIN}


def clean_label(value: str) -> str:
    """A condition as typed, made safe to show: one line, single spaces."""
    return " ".join(value.split())


def has_control_chars(value: str) -> bool:
    """CR, LF, NUL, tabs, Unicode line/paragraph separators and other control characters, and
    unpaired surrogates (JSON's "\\ud800" decodes to one; no database can store it)."""
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in value)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def is_storable_text(value: str) -> bool:
    """Text PostgreSQL and UTF-8 can hold: no U+0000, no unpaired surrogate."""
    return _UNSTORABLE.search(value) is None


def storable(value: str) -> str:
    """`value` with what cannot be stored replaced by U+FFFD: for evidence we keep as given
    (a header's undecodable bytes arrive as surrogate escapes)."""
    return _UNSTORABLE.sub("\ufffd", value)
