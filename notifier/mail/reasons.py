"""Why a subscription matched an event, in one sentence a subscriber understands."""

from __future__ import annotations

from typing import Any

from notifier.core.normalize import condition_keys, normalize_condition, normalize_mesh_id
from notifier.mail.labels import shorten


def match_reason(
    subscription_kind: str,
    subscription_label: str,
    event: dict[str, Any],
    *,
    mesh_id: str | None = None,
    title: str | None = None,
) -> str:
    """'You follow “Title” (NCT05879978).' or which condition text or MeSH term the study was
    matched by. `title` names a followed study (the NCT id alone without it)."""
    label = " ".join(subscription_label.split())
    if subscription_kind == "study":
        nct = str(event.get("nct_id") or "")
        named = f"“{title}” ({label})" if title else label
        if nct and label.upper() != nct:
            return f"You follow {named}, now listed as {nct}."
        return f"You follow {named}."
    study: dict[str, Any] = event.get("study") or {}
    wanted = condition_keys(label) | {normalize_condition(label)}
    conditions = [str(c) for c in study.get("conditions") or []]
    for condition in conditions:
        if condition_keys(condition) & wanted:
            return _listing(label, condition)
    wanted_mesh = normalize_mesh_id(mesh_id) if mesh_id else None
    meshes = _mesh_terms(study.get("condition_mesh"))
    for term_id, term in meshes:
        if normalize_condition(term) in wanted or (wanted_mesh and term_id == wanted_mesh):
            if closest := _closest(term, conditions):
                return _listing(label, closest)
            return f"You follow {label}; this study is indexed under the MeSH term {term}."
    for term_id, term in _mesh_terms(study.get("condition_mesh_ancestors")):
        if normalize_condition(term) in wanted or (wanted_mesh and term_id == wanted_mesh):
            listed = conditions or [t for _, t in meshes]
            via = f" (it lists {shorten(', '.join(listed[:3]), 160)})" if listed else ""
            return f"You follow {label}; this study is filed under that term{via}."
    for keyword in study.get("keywords") or []:
        if condition_keys(str(keyword)) & wanted:
            return f"You follow {label}; this study has the keyword {keyword}."
    return f"You follow {label}."


def _listing(label: str, condition: str) -> str:
    if normalize_condition(condition) == normalize_condition(label):
        return f"You follow {label}; this study lists it as a condition."
    return f"You follow {label}; this study lists {condition}."


def _mesh_terms(value: object) -> list[tuple[str | None, str]]:
    if not isinstance(value, list):
        return []
    return [
        (normalize_mesh_id(str(m.get("id") or "")), str(m["term"]))
        for m in value
        if isinstance(m, dict) and m.get("term")
    ]


# MeSH says "Neoplasms" where registries say tumours or cancer: the same word for this purpose.
_SAME_WORD = {
    "tumor": "neoplasm",
    "tumour": "neoplasm",
    "cancer": "neoplasm",
    "neoplasia": "neoplasm",
}


def _words(text: str) -> set[str]:
    words = (w.removesuffix("s") if len(w) > 3 else w for w in normalize_condition(text).split())
    return {_SAME_WORD.get(w, w) for w in words}


def _closest(term: str, conditions: list[str]) -> str | None:
    """The study's own condition text that says the same as a MeSH term, if one clearly does."""
    words = _words(term)
    best, best_score = None, 0.0
    for condition in conditions:
        theirs = _words(condition)
        score = len(words & theirs) / len(words | theirs) if words | theirs else 0.0
        if score > best_score:
            best, best_score = condition, score
    # Half the words in common or better; below that naming a condition would mislead.
    return best if best_score >= 0.5 else None
