"""What a study is about and what a typed condition means, both in the MeSH vocabulary's terms.

A study's *descriptors* come from its own words (conditions, keywords, titles) and from the
record's MeSH terms that those words support; its *keys* are every descriptor a subscriber may
have chosen to catch it (``Vocabulary.match_keys_for``), in the service's 9-digit form. Its *facts*
add a few plain words a subscription can require ("childhood", "metastatic", "solid"). A
subscription's *concept* is one descriptor to look up by index, plus at most one fact the study
must also have ("EGFR lung cancer": Lung Neoplasms, and the word EGFR in the study's own title or
conditions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from notifier.core.normalize import normalize_mesh_id
from notifier.core.vocabulary import GENERIC, canonical_ui, freeze, term_tokens, vocabulary

NEOPLASMS = "D009369"
BLOOD_CANCERS = "D019337"  # Hematologic Neoplasms (with the vocabulary's ADDED_EDGES)
SOLID = "w:solid"  # fact: a cancer study that is not about a blood cancer
WORD = "w:"

# Words a subscription may add to a condition, folded to one fact each ("childhood leukaemia"
# finds "paediatric" studies). Keys are normalised tokens (normalize_term: US spelling, singular).
_WORD_FACTS = {
    "child": "child",
    "childhood": "child",
    "pediatric": "child",
    "pediatrics": "child",
    "paediatric": "child",
    "infant": "child",
    "adolescent": "child",
    "metastatic": "metastatic",
    "metastasis": "metastatic",
    "metastase": "metastatic",
    "metastasized": "metastatic",
    "solid": "solid",
}
_FOLDED = frozenset(_WORD_FACTS.values())
_STAGE_IV = re.compile(r"\bstage\s*(iv|4)[abc]?\b", re.IGNORECASE)
# Residue words that say nothing a study would have to repeat.
_FILLER = frozenset(
    {
        "a", "an", "the", "of", "in", "on", "and", "or", "with", "for", "to", "my", "type",
        "kind", "form", "new", "study", "trial", "disease", "condition", "patient", "people",
    }
)  # fmt: skip
# "Gastric or Gastroesophageal Cancer": the shared head noun belongs to every alternative.
_ALTERNATIVES = re.compile(r"^(?P<first>[\w-]+) or (?P<second>[\w-]+) (?P<head>.+)$", re.I)
# A subscription resolving to one of these means "a cancer study that says so".
_PROCESS_WORDS = {"D009362": "metastatic"}  # Neoplasm Metastasis


def nine(ui: str) -> str:
    """The service's stored form of a vocabulary id: D055752 -> D000055752."""
    return normalize_mesh_id(ui) or ui


@dataclass(frozen=True)
class StudyTerms:
    """What one study is about, found once per event."""

    descriptors: dict[str, str]  # vocabulary id (NLM form) -> the study's words that named it
    keys: frozenset[str]  # 9-digit ids a subscription may hold to catch this study
    facts: frozenset[str]  # keys plus "w:" words
    texts: tuple[str, ...]  # the supported texts (conditions, MeSH terms) for text matching
    distrusted: tuple[dict[str, str], ...] = field(default=())  # record MeSH nobody supports


def _own_texts(study: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    def strings(value: Any) -> list[str]:
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    titles = [
        t for t in (study.get("brief_title"), study.get("official_title")) if isinstance(t, str)
    ]
    return strings(study.get("conditions")), strings(study.get("keywords")), titles


def _alternatives(text: str) -> list[str]:
    match = _ALTERNATIVES.match(text.strip())
    if not match:
        return [text]
    head = match["head"]
    return [text, f"{match['first']} {head}", f"{match['second']} {head}"]


def _word_facts(texts: Iterable[str]) -> set[str]:
    facts: set[str] = set()
    for text in texts:
        for token in term_tokens(text):
            facts.add(WORD + _WORD_FACTS.get(token, token))
        if _STAGE_IV.search(text):
            facts.add(WORD + "metastatic")
    return facts


def _supported(ui: str, term: str, found: dict[str, str], words: str) -> bool:
    """A record's MeSH term is supported when the study's own words name it, a narrower or a
    broader condition of it, or its heading's words."""
    v = vocabulary()
    if ui in found:
        return True
    for own in found:
        if ui in v.ancestors(own) or own in v.ancestors(ui):
            return True
    key = " ".join(term_tokens(term))
    return bool(key) and f" {key} " in words


def study_terms(study: dict[str, Any]) -> StudyTerms:
    """The descriptors, keys and facts of an event's `study` section."""
    return _study_terms(_freeze(study))


def _freeze(study: dict[str, Any]) -> tuple[Any, ...]:
    conditions, keywords, titles = _own_texts(study)
    mesh = tuple(
        (str(m.get("id", "")), str(m.get("term", "")))
        for m in study.get("condition_mesh") or []
        if isinstance(m, dict)
    )
    return tuple(conditions), tuple(keywords), tuple(titles), mesh


@lru_cache(maxsize=256)
def _study_terms(frozen: tuple[Any, ...]) -> StudyTerms:
    conditions, keywords, titles, mesh = frozen
    v = vocabulary()
    found: dict[str, str] = {}
    for text in (*conditions, *keywords):
        for alternative in _alternatives(text):
            for m in v.resolve(alternative).matches:
                found.setdefault(m.mesh_id, m.text)
    for title in titles:
        # A supplementary concept inside a long title is too loose a reading (a DNA repair
        # syndrome mapped to Brain Neoplasms): titles add named descriptors only.
        for m in v.resolve(title).matches:
            if m.how != "supplementary concept":
                found.setdefault(m.mesh_id, m.text)
    found = {ui: words for ui, words in found.items() if ui not in GENERIC}
    words = " " + " ".join(term_tokens(" ".join((*conditions, *keywords, *titles)))) + " "
    descriptors = dict(found)
    texts = list(conditions)
    distrusted: list[dict[str, str]] = []
    for raw_id, term in mesh:
        known = v.descriptor(raw_id)
        if known is None or known.ui in GENERIC:
            continue  # outside the vocabulary's trees, or never a key anyway
        if _supported(known.ui, term, found, words):
            descriptors.setdefault(known.ui, term)
            texts.append(term)
        else:
            distrusted.append({"id": nine(known.ui), "term": term})
    keys: set[str] = set()
    solid = False
    for ui in descriptors:
        reach = v.match_keys_for(ui)
        keys.update(nine(k) for k in reach)
        if NEOPLASMS in reach and ui != NEOPLASMS and BLOOD_CANCERS not in reach | {ui}:
            solid = True
    # Any word of the titles and conditions may be required ("EGFR lung cancer"); keywords
    # (drugs, genes tested, methods) only add the folded population words (stage, age).
    facts = keys | _word_facts((*conditions, *titles))
    facts |= {f for f in _word_facts(keywords) if f[len(WORD) :] in _FOLDED}
    if solid:
        facts.add(SOLID)
    return StudyTerms(
        descriptors=descriptors,
        keys=frozenset(keys),
        facts=frozenset(facts),
        texts=tuple(texts),
        distrusted=tuple(distrusted),
    )


@dataclass(frozen=True)
class Concept:
    """What a condition subscription looks up: one descriptor (9-digit) and at most one fact."""

    mesh_id: str | None
    requires: str | None
    resolved: tuple[dict[str, str], ...]  # [{mesh_id, term, how, text}], for the person

    @property
    def stored(self) -> list[dict[str, str]] | None:
        return list(self.resolved) or None


def concept_of(text: str, mesh_id: str | None = None) -> Concept:
    """A typed condition (or a site's MeSH id) as what it matches.

    One descriptor covering the words: that descriptor. Words left over ("EGFR", "childhood",
    "solid"): the descriptor, and the first such word as a fact the study must have. Several
    descriptors ("macular oedema from vein occlusion", a concept mapped to several headings): the
    most specific one, requiring the next. Nothing known: no descriptor (text matching only).
    """
    v = vocabulary()
    if mesh_id is not None:
        descriptor = v.descriptor(mesh_id)
        name = descriptor.name if descriptor else text
        given = ({"mesh_id": nine(mesh_id), "term": name, "how": "given", "text": text},)
        return Concept(nine(mesh_id), _process_fact(mesh_id), given)
    resolution = v.resolve(text)
    matches = [m for m in resolution.matches if m.mesh_id not in GENERIC]
    resolved = tuple(
        {"mesh_id": nine(m.mesh_id), "term": m.term, "how": m.how, "text": m.text} for m in matches
    )
    if not matches:
        return Concept(None, None, ())
    uis = [m.mesh_id for m in matches]
    # Most specific first: one that is not an ancestor of another.
    uis.sort(key=lambda ui: -sum(ui in v.ancestors(o) for o in uis))
    uis.sort(key=lambda ui: any(ui in v.ancestors(o) for o in uis if o != ui))
    primary = uis[0]
    requires = nine(uis[1]) if len(uis) > 1 else _residue_fact(text, matches)
    if requires is None:
        requires = _process_fact(primary)
        if requires is not None:
            primary = NEOPLASMS
    return Concept(nine(primary), requires, resolved)


def _process_fact(ui: str) -> str | None:
    word = _PROCESS_WORDS.get(canonical_ui(ui) or "")
    return WORD + word if word else None


def _residue_fact(text: str, matches: Iterable[Any]) -> str | None:
    covered: set[str] = set()
    for m in matches:
        covered.update(term_tokens(m.text))
    for token in term_tokens(text):
        if token not in covered and token not in _FILLER and len(token) > 1:
            fact = _WORD_FACTS.get(token, token)
            return SOLID if fact == "solid" else WORD + fact
    return None


_FACT_PHRASES = {
    WORD + "child": "studies for children",
    WORD + "metastatic": "studies for cancer that has spread",
    SOLID: "solid tumours only",
}


def meaning(mesh_id: str | None, requires: str | None, label: str = "") -> str | None:
    """What a condition subscription catches, in plain words: "lung cancer — including
    non-small cell and small cell lung cancer"; None when it matches by its text only."""
    if mesh_id is None:
        return None
    v = vocabulary()
    if requires in _FACT_PHRASES and canonical_ui(mesh_id) == NEOPLASMS:
        return f"cancer: {_FACT_PHRASES[requires or '']}"
    words = v.describe(mesh_id)
    if requires is None:
        return words
    if requires in _FACT_PHRASES:
        return f"{words} ({_FACT_PHRASES[requires]})"
    if requires.startswith(WORD):
        word = requires[len(WORD) :]
        typed = next((w for w in label.split() if term_tokens(w) == [word]), word)
        return f"{words} (only studies that mention “{typed}”)"
    return f"{words} (only studies also about {v.label(requires).lower()})"


def warm_vocabulary() -> None:
    """Load the vocabulary and build what describing and suggesting use (about a second)."""
    v = vocabulary()
    v.describe(NEOPLASMS)
    v.suggest("lung cancer")
    freeze()  # the indexes just built live as long as the process
