"""Why a subscription matched an event, in one sentence a subscriber understands: their own
term first, then what in the study matched it, in plain words (never a bare MeSH heading)."""

from __future__ import annotations

from typing import Any

from notifier.core.concepts import NEOPLASMS, SOLID, WORD, concept_of, study_terms
from notifier.core.normalize import condition_keys, normalize_condition, normalize_mesh_id
from notifier.core.vocabulary import canonical_ui, term_tokens, vocabulary

# A required fact as words: "… and it is for children".
_FACT_WORDS = {
    WORD + "child": "it is for children",
    WORD + "metastatic": "it is for cancer that has spread (metastatic)",
    SOLID: "it is about solid tumours",
}


def match_reason(
    subscription_kind: str,
    subscription_label: str,
    event: dict[str, Any],
    *,
    mesh_id: str | None = None,
    requires: str | None = None,
    title: str | None = None,
) -> str:
    """'You follow “Title” (NCT05879978).' or, for a condition, what in the study matched it.
    `title` names a followed study (the NCT id alone without it)."""
    label = " ".join(subscription_label.split())
    if subscription_kind == "study":
        nct = str(event.get("nct_id") or "")
        named = f"“{title}” ({label})" if title else label
        if nct and label.upper() != nct:
            return f"You follow {named}, now listed as {nct}."
        return f"You follow {named}."
    study: dict[str, Any] = event.get("study") or {}
    if mesh_id is None and requires is None:
        concept = concept_of(label)  # as signup resolves it (rows from before did not store it)
        mesh_id, requires = concept.mesh_id, concept.requires
    head = f"You follow “{label}”"
    about = _about(study, mesh_id, requires, label)
    if about:
        return f"{head}: {about}."
    wanted = condition_keys(label) | {normalize_condition(label)}
    for condition in [str(c) for c in study.get("conditions") or []]:
        if condition_keys(condition) & wanted:
            return f"{head}: this study lists “{condition}” as a condition."
    return f"{head}."


def lower(label: str) -> str:
    """Sentence-case words inside a sentence: "Lung cancer" -> "lung cancer", "HIV" stays."""
    first = label.split(" ", 1)[0]
    return label if first[1:2].isupper() or first.isupper() else label[:1].lower() + label[1:]


def _about(
    study: dict[str, Any], mesh_id: str | None, requires: str | None, label: str
) -> str | None:
    """'this study is about non-small cell lung cancer (it lists “NSCLC”), a kind of lung
    cancer', or None when no descriptor of the study reaches the subscription's."""
    wanted = canonical_ui(mesh_id or "")
    if wanted is None:
        return None
    v = vocabulary()
    terms = study_terms(study)
    reaching = [ui for ui in terms.descriptors if wanted in v.match_keys_for(ui)]
    if not reaching:
        return None
    # The most specific condition the study names ("small cell lung cancer", not "cancer").
    ui = max(reaching, key=lambda d: (len(v.match_keys_for(d)), d))
    own_words = terms.descriptors[ui]
    name = lower(v.label(ui))
    same = term_tokens(own_words) == term_tokens(name)
    sentence = f"this study is about {name}" + ("" if same else f" (it lists “{own_words}”)")
    if requires == SOLID:
        return sentence + ", a solid tumour"
    if ui != wanted and not (wanted == NEOPLASMS and requires in _FACT_WORDS):
        sentence += f", a kind of {lower(v.label(wanted))}"
    if requires:
        sentence += f", and {_fact(requires, label)}"
    return sentence


def _fact(requires: str, label: str) -> str:
    if requires in _FACT_WORDS:
        return _FACT_WORDS[requires]
    if requires.startswith(WORD):
        word = requires[len(WORD) :]
        # The subscriber's own spelling of it ("EGFR"), when their words hold it.
        typed = next((w for w in label.split() if term_tokens(w) == [word]), word)
        return f"it mentions “{typed}”"
    other = normalize_mesh_id(requires)
    return f"it is also about {lower(vocabulary().label(other or requires))}"
