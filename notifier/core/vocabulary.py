"""The MeSH vocabulary: what a typed condition means, and which studies a condition catches.

Built from MeSH 2024 (U.S. National Library of Medicine) by ``notifier.ops.build_vocabulary`` into
``mesh2024.vocab.json.gz`` next to this module; pure standard library, loaded once per process.

The matching rule. A subscription to descriptor A catches a study carrying descriptor D when A is
in ``match_keys_for(D)``: D itself plus every ancestor reached by climbing D's tree numbers (a
"lung cancer" subscriber gets non-small cell and small cell lung cancer, "leukemia" gets acute
lymphoblastic leukemia, "cancer" gets every cancer). The climb stops at the few MeSH edges that
are filing conventions rather than clinical sense (``EXCLUDED_EDGES``, each with its reason:
Melanoma is filed under Neuroendocrine Tumors, so a neuroendocrine-tumour subscriber must not get
melanoma studies). Organising headings (``GENERIC``: "Neoplasms by Site", "Pathologic Processes",
"Recurrence", "Syndrome", ...) are never keys: nobody subscribes to them, and keys like
"Recurrence" or "Disease Progression" would make unrelated studies match; the climb passes through
them, so Melanoma still reaches Neoplasms. Small Cell Lung Carcinoma is not under Neuroendocrine
Tumors in MeSH and this rule keeps it so.
"""

from __future__ import annotations

import bisect
import functools
import gc
import gzip
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VOCAB_PATH = Path(__file__).with_name("mesh2024.vocab.json.gz")
FORMAT = 1
# Bump whenever normalize_term (or the key derivations below) changes: the shipped file stores
# keys made by it, and load() refuses a file made by another version.
NORMALIZATION = 1

# ---------------------------------------------------------------------------------------------
# MeSH UIs

_UI_RE = re.compile(r"^([DC])0*(\d{1,9})$")
# NLM moved to 9-digit UIs in 2015: every 6-digit descriptor UI is <= D066331 and every 9-digit
# one >= D000066388 (checked on all 30,764 MeSH 2024 descriptors); SCRs switched between
# C585640 and C000591739.
_NINE_DIGITS_FROM = {"D": 66_332, "C": 586_000}


def canonical_ui(value: str) -> str | None:
    """A MeSH UI in NLM's own form: 'D000055752' and 'd055752' -> 'D055752'; None if not a UI.

    Padding is stripped to 6 digits for the UIs NLM wrote with 6 digits; the newer ones keep their
    9 digits ('D66388' -> 'D000066388'), as NLM prints them.
    """
    match = _UI_RE.match(value.strip().upper())
    if not match:
        return None
    letter, digits = match.groups()
    number = int(digits)
    if number == 0:
        return None
    width = 9 if number >= _NINE_DIGITS_FROM[letter] else 6
    return f"{letter}{number:0{width}d}"


# ---------------------------------------------------------------------------------------------
# Term normalisation

_UK_US = (
    ("oesophag", "esophag"),
    ("oestr", "estr"),
    ("oedem", "edem"),
    ("foet", "fet"),
    ("coeliac", "celiac"),
    ("rrhoea", "rrhea"),
    ("pnoea", "pnea"),
    ("leukaem", "leukem"),
    ("anaem", "anem"),
    ("ischaem", "ischem"),
    ("haem", "hem"),
    ("aemia", "emia"),
    ("aemic", "emic"),
    ("paed", "ped"),
    ("gynaec", "gynec"),
    ("anaesth", "anesth"),
    ("aetiol", "etiol"),
    ("faec", "fec"),
    ("caec", "cec"),
    ("tumour", "tumor"),
    ("behaviour", "behavior"),
    ("colour", "color"),
    ("humour", "humor"),
    ("labour", "labor"),
    ("tumor", "tumor"),
    ("centre", "center"),
    ("fibre", "fiber"),
    ("ageing", "aging"),
    ("sulph", "sulf"),
    ("leucocyt", "leukocyt"),
    ("leukaemia", "leukemia"),
)
_UK_US_RE = re.compile("|".join(sorted((re.escape(uk) for uk, _ in _UK_US), key=len, reverse=True)))
_UK_US_MAP = dict(_UK_US)

_IRREGULAR = {
    "metastases": "metastasis",
    "diagnoses": "diagnosis",
    "carcinomata": "carcinoma",
    "sarcomata": "sarcoma",
    "children": "child",
    "women": "woman",
    "men": "man",
    "feet": "foot",
    "teeth": "tooth",
    "indices": "index",
    "appendices": "appendix",
    "varices": "varix",
    "apices": "apex",
    "fungi": "fungus",
    "bronchi": "bronchus",
    "emboli": "embolus",
    "thrombi": "thrombus",
    "calculi": "calculus",
    "nuclei": "nucleus",
    "nevi": "nevus",
    "naevi": "nevus",
    "naevus": "nevus",
    "ganglia": "ganglion",
    "phenomena": "phenomenon",
    "vertebrae": "vertebra",
    "viruses": "virus",
}
# Words that end like a plural but are not one (or whose singular would collide).
_NOT_PLURAL = frozenset(
    {
        "diabetes",
        "herpes",
        "measles",
        "mumps",
        "rabies",
        "scabies",
        "caries",
        "species",
        "series",
        "rickets",
        "ascites",
        "pancreas",
        "gas",
        "aids",
        "always",
        "perhaps",
        "this",
        "has",
        "was",
        "does",
        "yes",
        "less",
        "news",
        "lens",
        "biceps",
        "triceps",
        "hydrops",
        "mellitus",
        "sepsis",
        "crisis",
        "axis",
        "status",
        "plexus",
        "corpus",
        "lupus",
        "virus",
        "pubis",
        "pelvis",
        "testis",
        "iris",
        "arthritis",
        "psoriasis",
        "syphilis",
        "tetanus",
        "ileus",
        "sinus",
        "uterus",
        "fetus",
        "thymus",
        "nevus",
        "abacus",
        "polyposis",
        "stenosis",
        "thrombosis",
        "sclerosis",
        "fibrosis",
        "necrosis",
    }
)  # fmt: skip


@functools.lru_cache(maxsize=1 << 16)
def _token(word: str) -> str:
    """One lower-case word: UK -> US spelling, then plural -> singular."""
    word = _UK_US_RE.sub(lambda m: _UK_US_MAP[m.group(0)], word)
    return _singular(word)


def _singular(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word in _NOT_PLURAL or not word.endswith("s") or not word.isalpha():
        return word
    if word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for plural, single in (("stases", "stasis"), ("iases", "iasis"), ("yses", "ysis")):
        if word.endswith(plural):
            return word[: -len(plural)] + single
    if word.endswith("oses") and len(word) > 6:
        return word[:-4] + "osis"
    if word.endswith(("sses", "ches", "shes", "xes", "zes")):
        return word[:-2]
    return word[:-1]


_POSSESSIVE = re.compile(r"(?<=\w)['\u2019]s\b")
_SPLIT = re.compile(r"[\W_]+")
# A term's qualifier parts are separated by these (commas, semicolons, brackets, slashes): an
# n-gram never crosses one.
_SEGMENT = re.compile(r"[,;:()\[\]{}/|]+|\s+-\s+")


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return _POSSESSIVE.sub("", text.replace("&", " and "))


def term_tokens(text: str) -> list[str]:
    """The normalised words of a term (see normalize_term)."""
    return [_token(word) for word in _SPLIT.split(_fold(text)) if word]


def normalize_term(text: str) -> str:
    """The comparison key of a term.

    NFKC, case folding, accents, possessives ("Crohn's"), hyphens, punctuation and brackets to
    spaces, UK -> US spelling, plural -> singular per word: "Non-Small-Cell Lung Tumours" ->
    "non small cell lung tumor". Word order is kept; ``bag_key`` forgets it.
    """
    return " ".join(term_tokens(text))


_BAG_DROP = frozenset({"of", "the", "a", "an"})


def bag_key(key: str) -> str:
    """Order-insensitive form of a key: "cancer of the lung" and "lung cancer" -> "cancer lung"."""
    return " ".join(sorted(w for w in key.split() if w not in _BAG_DROP))


_FAMILY = {
    "cancer": "neoplasm",
    "tumor": "neoplasm",
    "neoplasia": "neoplasm",
    "malignancy": "neoplasm",
}
_FAMILY_QUERY = {**_FAMILY, "carcinoma": "neoplasm"}


def family_key(key: str, *, query: bool = False) -> str:
    """Cancer/tumour/neoplasm spoken as one word, as MeSH's Neoplasms does ("Tumors", "Cancer").

    On the query side a carcinoma of a site also falls back to that site's neoplasms ("bladder
    carcinoma" -> Urinary Bladder Neoplasms) when no descriptor names it exactly.
    """
    table = _FAMILY_QUERY if query else _FAMILY
    return " ".join(table.get(w, w) for w in key.split())


def uninvert(term: str) -> str | None:
    """MeSH's inverted form read naturally: "Leukemia, Myeloid, Acute" -> "Acute Myeloid
    Leukemia"."""
    if "," not in term:
        return None
    parts = [p.strip() for p in term.split(",") if p.strip()]
    return " ".join(reversed(parts)) if len(parts) > 1 else None


# ---------------------------------------------------------------------------------------------
# Curated tables (the generator checks every UI and heading against the MeSH data)


@dataclass(frozen=True)
class Acronym:
    abbr: str
    ui: str
    heading: str
    strict: bool = False  # an English word or ambiguous: only ever as an upper-case token


def _acronyms(rows: str) -> tuple[Acronym, ...]:
    out = []
    for line in rows.strip().splitlines():
        abbr, ui, heading = (part.strip() for part in line.split("|"))
        strict = abbr.endswith("!")
        out.append(Acronym(abbr.rstrip("!"), ui, heading, strict))
    return tuple(out)


# abbr | UI | MeSH 2024 heading; "!" = strict (English word, or another common meaning).
ACRONYMS = _acronyms(
    """
    NSCLC | D002289 | Carcinoma, Non-Small-Cell Lung
    SCLC | D055752 | Small Cell Lung Carcinoma
    AML | D015470 | Leukemia, Myeloid, Acute
    CLL | D015451 | Leukemia, Lymphocytic, Chronic, B-Cell
    CML | D015464 | Leukemia, Myelogenous, Chronic, BCR-ABL Positive
    ALL! | D054198 | Precursor Cell Lymphoblastic Leukemia-Lymphoma
    MDS | D009190 | Myelodysplastic Syndromes
    NHL | D008228 | Lymphoma, Non-Hodgkin
    DLBCL | D016403 | Lymphoma, Large B-Cell, Diffuse
    HCC | D006528 | Carcinoma, Hepatocellular
    RCC | D002292 | Carcinoma, Renal Cell
    ccRCC | D002292 | Carcinoma, Renal Cell
    CRC | D015179 | Colorectal Neoplasms
    GIST! | D046152 | Gastrointestinal Stromal Tumors
    NET! | D018358 | Neuroendocrine Tumors
    NETs! | D018358 | Neuroendocrine Tumors
    TNBC | D064726 | Triple Negative Breast Neoplasms
    COPD | D029424 | Pulmonary Disease, Chronic Obstructive
    ALS | D000690 | Amyotrophic Lateral Sclerosis
    MS! | D009103 | Multiple Sclerosis
    HIV | D015658 | HIV Infections
    IBD | D015212 | Inflammatory Bowel Diseases
    RA! | D001172 | Arthritis, Rheumatoid
    SLE | D008180 | Lupus Erythematosus, Systemic
    CKD | D051436 | Renal Insufficiency, Chronic
    ESRD | D007676 | Kidney Failure, Chronic
    AKI | D058186 | Acute Kidney Injury
    T2D | D003924 | Diabetes Mellitus, Type 2
    T2DM | D003924 | Diabetes Mellitus, Type 2
    T1D | D003922 | Diabetes Mellitus, Type 1
    T1DM | D003922 | Diabetes Mellitus, Type 1
    ADHD | D001289 | Attention Deficit Disorder with Hyperactivity
    PTSD | D013313 | Stress Disorders, Post-Traumatic
    OCD | D009771 | Obsessive-Compulsive Disorder
    MDD | D003865 | Depressive Disorder, Major
    ASD! | D000067877 | Autism Spectrum Disorder
    GBM | D005909 | Glioblastoma
    MM! | D009101 | Multiple Myeloma
    HNSCC | D000077195 | Squamous Cell Carcinoma of Head and Neck
    SCCHN | D000077195 | Squamous Cell Carcinoma of Head and Neck
    CRPC | D064129 | Prostatic Neoplasms, Castration-Resistant
    mCRPC | D064129 | Prostatic Neoplasms, Castration-Resistant
    NASH | D065626 | Non-alcoholic Fatty Liver Disease
    NAFLD | D065626 | Non-alcoholic Fatty Liver Disease
    AF! | D001281 | Atrial Fibrillation
    AFib | D001281 | Atrial Fibrillation
    CHF | D006333 | Heart Failure
    MI! | D009203 | Myocardial Infarction
    CAD! | D003324 | Coronary Artery Disease
    PAD! | D058729 | Peripheral Arterial Disease
    DVT | D020246 | Venous Thrombosis
    UC! | D003093 | Colitis, Ulcerative
    IBS | D043183 | Irritable Bowel Syndrome
    AMD | D008268 | Macular Degeneration
    HL! | D006689 | Hodgkin Disease
    MCL | D020522 | Lymphoma, Mantle-Cell
    FL! | D008224 | Lymphoma, Follicular
    SMA! | D009134 | Muscular Atrophy, Spinal
    DMD | D020388 | Muscular Dystrophy, Duchenne
    CF! | D003550 | Cystic Fibrosis
    PDAC | D021441 | Carcinoma, Pancreatic Ductal
    HPV | D030361 | Papillomavirus Infections
    HBV | D006509 | Hepatitis B
    HCV | D006526 | Hepatitis C
    TB! | D014376 | Tuberculosis
    ESCC | D000077277 | Esophageal Squamous Cell Carcinoma
    SCC! | D002294 | Carcinoma, Squamous Cell
    BCC! | D002280 | Carcinoma, Basal Cell
    ITP | D016553 | Purpura, Thrombocytopenic, Idiopathic
    MPN | D009196 | Myeloproliferative Disorders
    PNH | D006457 | Hemoglobinuria, Paroxysmal
    BPH | D011470 | Prostatic Hyperplasia
    OSA | D020181 | Sleep Apnea, Obstructive
    MCC! | D015266 | Carcinoma, Merkel Cell
    PsA | D015535 | Arthritis, Psoriatic
    NMOSD | D009471 | Neuromyelitis Optica
    MG! | D009157 | Myasthenia Gravis
    ARDS | D012128 | Respiratory Distress Syndrome
    SCD! | D000755 | Anemia, Sickle Cell
    GVHD | D006086 | Graft vs Host Disease
    CMV | D003586 | Cytomegalovirus Infections
    RSV | D018357 | Respiratory Syncytial Virus Infections
    TBI | D000070642 | Brain Injuries, Traumatic
    CTCL | D016410 | Lymphoma, T-Cell, Cutaneous
    PTCL | D016411 | Lymphoma, T-Cell, Peripheral
    MZL | D018442 | Lymphoma, B-Cell, Marginal Zone
    JIA | D001171 | Arthritis, Juvenile
    PAH! | D000081029 | Pulmonary Arterial Hypertension
    IPF | D054990 | Idiopathic Pulmonary Fibrosis
    ILD | D017563 | Lung Diseases, Interstitial
    PCOS | D011085 | Polycystic Ovary Syndrome
    ACS! | D054058 | Acute Coronary Syndrome
    """
)

# Everyday words for a descriptor that MeSH lacks (entry terms cover most: "heart attack").
LAY_TERMS: dict[str, tuple[str, ...]] = {
    "myeloma": ("D009101",),
    "blood cancer": ("D019337",),  # Hematologic Neoplasms
    "bowel cancer": ("D015179",),  # Colorectal Neoplasms (UK usage)
    "high cholesterol": ("D006937",),  # Hypercholesterolemia
    "diabetes": ("D003920",),  # Diabetes Mellitus ("diabetes" alone is no MeSH entry term)
    # MeSH has no "acute leukemia": a study of acute leukaemias enrols both kinds.
    "acute leukemia": ("D054198", "D015470"),
}

# Edges (child, parent) that MeSH lacks and a subscriber to the parent expects: the climb in
# match_keys_for follows them as if they were tree edges. Each with the reason.
ADDED_EDGES: dict[tuple[str, str], str] = {
    ("D007938", "D019337"): "Leukemia is a blood cancer; MeSH files it under Hemic and Lymphatic "
    "Diseases, not under Hematologic Neoplasms",
    ("D008223", "D019337"): "Lymphoma, likewise a blood cancer",
    ("D054219", "D019337"): "Plasma-cell neoplasms (myeloma), likewise",
    ("D009190", "D019337"): "Myelodysplastic syndromes are blood cancers (WHO)",
    ("D009196", "D019337"): "Myeloproliferative neoplasms are blood cancers (WHO)",
}
_ADDED_PARENTS: dict[str, tuple[str, ...]] = {}
for _child, _parent in ADDED_EDGES:
    _ADDED_PARENTS[_child] = (*_ADDED_PARENTS.get(_child, ()), _parent)

# Edges (child, parent) of MeSH's trees that a subscriber to the parent would not expect to
# cross: the climb in match_keys_for stops there. Each with the reason.
EXCLUDED_EDGES: dict[tuple[str, str], str] = {
    ("D008545", "D018358"): "Melanoma is a melanocytic tumour; MeSH files it under Neuroendocrine "
    "Tumors for its neural-crest origin, and no NET trial wants melanoma patients",
    ("D009442", "D018358"): "Neurilemmoma (schwannoma) is a nerve-sheath tumour, not a "
    "neuroendocrine one",
    ("D017599", "D009373"): "Neuroectodermal tumours (gliomas, neuroblastoma, NETs) are not germ "
    "cell tumours; MeSH groups them as embryonal",
    ("D001941", "D012871"): "MeSH files Breast Diseases under Skin Diseases (skin appendages): a "
    "skin-disease subscriber does not expect breast cancer studies",
    ("D003560", "D009369"): "Cysts (polycystic ovary syndrome, renal cysts) are not cancers",
    ("D009101", "D020141"): "Multiple Myeloma is filed under Hemostatic Disorders, a Vascular "
    "Disease: a cardiovascular subscriber does not expect myeloma studies",
    ("D008258", "D020141"): "Waldenstrom Macroglobulinemia, likewise a lymphoma not a vascular "
    "disease",
    ("D009157", "D020361"): "Myasthenia Gravis is autoimmune; MeSH also files it as a "
    "paraneoplastic syndrome (a thymoma minority), which would make it a Neoplasms study",
}

# Organising headings: never match keys, never suggested; the climb passes through them.
GENERIC: dict[str, str] = {
    "D009370": "Neoplasms by Histologic Type: an index, not a condition",
    "D009371": "Neoplasms by Site: an index, not a condition",
    "D009385": "Neoplastic Processes: holds Neoplasm Metastasis, Recurrence, Invasiveness",
    "D013568": "Pathological Conditions, Signs and Symptoms (C23): a category",
    "D010335": "Pathologic Processes: a category",
    "D020763": "Pathological Conditions, Anatomical: a category",
    "D012816": "Signs and Symptoms: a category",
    "D020969": "Disease Attributes: Chronic Disease, Recurrence, Disease Progression",
    "D004194": "Disease: says nothing",
    "D013577": "Syndrome: says nothing",
    "D012008": "Recurrence: an attribute, on records of every kind",
    "D018450": "Disease Progression: an attribute",
    "D002908": "Chronic Disease: an attribute",
    "D000208": "Acute Disease: an attribute",
    "D009358": "Congenital, Hereditary, and Neonatal Diseases and Abnormalities: a category",
    "D017437": "Skin and Connective Tissue Diseases: a category",
    "D001520": "Behavior and Behavior Mechanisms (F01): a category",
    "D011579": "Psychological Phenomena (F02): a category",
    "D004191": "Behavioral Disciplines and Activities (F04): a category",
    "D007280": "Disorders of Environmental Origin (C21): a category",
    "D064419": "Chemically-Induced Disorders (C25): a category",
}

# Partial (n-gram) matches of these inside longer text are ignored: they qualify, not name.
_QUALIFIERS = frozenset(GENERIC) | {"D009362", "D009364"}  # Neoplasm Metastasis, Recurrence, Local

# Lay labels where no entry term reads well.
LABELS = {
    "D009369": "Cancer",
    "D009203": "Heart attack",
    "D003924": "Type 2 diabetes",
    "D003922": "Type 1 diabetes",
    "D054198": "Acute lymphoblastic leukemia",
    "D015470": "Acute myeloid leukemia",
    "D015451": "Chronic lymphocytic leukemia",
    "D015464": "Chronic myeloid leukemia",
    "D015658": "HIV",
    "D006689": "Hodgkin lymphoma",
    "D008228": "Non-Hodgkin lymphoma",
}

# For describe(): the best-known narrower conditions of broad headings, where counting synonyms
# would not find them.
BEST_KNOWN: dict[str, tuple[str, ...]] = {
    "D009369": ("D001943", "D008175", "D015179"),  # cancer: breast, lung, colorectal
    "D008175": ("D002289", "D055752"),  # lung cancer: non-small cell, small cell
    "D007938": ("D054198", "D015470", "D015451"),  # leukemia: ALL, AML, CLL
    "D008223": ("D006689", "D008228"),  # lymphoma: Hodgkin, non-Hodgkin
    "D003920": ("D003924", "D003922"),  # diabetes: type 2, type 1
    "D019337": ("D007938", "D008223", "D009101"),  # blood cancer: leukemia, lymphoma, myeloma
}

KINDS = (
    "name",
    "entry term",
    "inverted name",
    "permuted term",
    "acronym",
    "lay term",
    "supplementary concept",
    "family variant",
    "word order",
)
KIND_NAME, KIND_ENTRY, KIND_INVERTED, KIND_PERMUTED, KIND_ACRONYM = 0, 1, 2, 3, 4
KIND_LAY, KIND_SCR, KIND_FAMILY, KIND_BAG = 5, 6, 7, 8


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Descriptor:
    ui: str
    name: str
    tree_numbers: tuple[str, ...]
    terms: tuple[str, ...]  # name first, then entry terms (display forms)


@dataclass(frozen=True)
class Match:
    mesh_id: str
    term: str  # the vocabulary's term that matched (display form)
    how: str  # one of KINDS
    text: str  # the words of the input it matched


@dataclass(frozen=True)
class Resolution:
    text: str
    mesh_ids: tuple[str, ...] = ()
    matches: tuple[Match, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.mesh_ids)

    @property
    def how(self) -> tuple[str, ...]:
        return tuple(m.how for m in self.matches)


@dataclass(frozen=True)
class Suggestion:
    mesh_id: str
    name: str
    label: str
    matched: str


@dataclass(frozen=True, slots=True)
class _Entry:
    """What one key stands for: the best-ranked targets only."""

    kind: int
    uis: tuple[str, ...]
    display: str


@dataclass(frozen=True, slots=True)
class _Token:
    key: str
    raw: str


MAX_TEXT = 1000  # longer input is cut: conditions are short, titles under 300 characters
MAX_TOKENS = 120


# ---------------------------------------------------------------------------------------------
# The vocabulary


class VocabularyError(RuntimeError):
    pass


@functools.cache
def vocabulary() -> Vocabulary:
    """The shipped vocabulary, loaded once per process."""
    loaded = Vocabulary.load(VOCAB_PATH)
    freeze()
    return loaded


def freeze() -> None:
    """Move every object alive now out of the garbage collector's sight (gc.freeze): the
    vocabulary's ~1.5 million objects never die, and a full collection walking them took
    ~100 ms every few thousand requests (GET /v1/conditions p99 99 ms against a no-op's 9 ms)
    and slowed every mail rendered in a worker."""
    gc.collect()
    gc.freeze()


@dataclass(eq=False)
class Vocabulary:
    mesh_year: int
    source: str
    _descriptors: dict[str, Descriptor]
    _names: dict[str, str]
    _index: dict[str, _Entry]
    _family: dict[str, _Entry]
    _bag: dict[str, _Entry]
    _acronyms: dict[str, _Entry]  # upper-case abbreviation -> entry
    _acronym_strict: frozenset[str]
    _by_tree: dict[str, str]
    _first_words: frozenset[str]
    _max_words: int
    _keys: list[str] = field(default_factory=list)  # sorted, for prefix search

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Vocabulary:
        if data.get("format") != FORMAT or data.get("normalization") != NORMALIZATION:
            raise VocabularyError(
                "vocabulary file made by another version: "
                "run python -m notifier.ops.build_vocabulary"
            )
        descriptors: dict[str, Descriptor] = {}
        by_tree: dict[str, str] = {}
        for ui, name, trees, terms in data["descriptors"]:
            descriptors[ui] = Descriptor(ui, name, tuple(trees), (name, *terms))
            for tree in trees:
                by_tree[tree] = ui
        names = {ui: d.name for ui, d in descriptors.items()}
        names.update(data["names"])
        for scr_ui, name, _mapped in data["scrs"]:
            names[scr_ui] = name

        def entries(rows: list[list[Any]]) -> dict[str, _Entry]:
            return {key: _Entry(kind, tuple(uis), display) for key, kind, uis, display in rows}

        index = entries(data["index"])
        for term, uis in LAY_TERMS.items():
            index.setdefault(normalize_term(term), _Entry(KIND_LAY, uis, term))
        acronyms: dict[str, _Entry] = {}
        for abbr, uis in data["acronyms"]:
            acronyms[abbr] = _Entry(KIND_ACRONYM, tuple(uis), abbr)
        for acro in ACRONYMS:
            acronyms[acro.abbr] = _Entry(KIND_ACRONYM, (acro.ui,), acro.abbr)
        keys = sorted(index)
        family_keys = [row[0] for row in data["family"]]
        first_words = frozenset(k.split(" ", 1)[0] for k in [*keys, *family_keys]) | frozenset(
            _FAMILY_QUERY
        )
        return cls(
            mesh_year=int(data["mesh_year"]),
            source=str(data["source"]),
            _descriptors=descriptors,
            _names=names,
            _index=index,
            _family=entries(data["family"]),
            _bag=entries(data["bag"]),
            _acronyms=acronyms,
            _acronym_strict=frozenset(a.abbr for a in ACRONYMS if a.strict),
            _by_tree=by_tree,
            _first_words=first_words,
            _max_words=max(k.count(" ") + 1 for k in [*keys, *family_keys]),
            _keys=keys,
        )

    # -- descriptors --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._descriptors)

    def __contains__(self, ui: object) -> bool:
        return isinstance(ui, str) and (canonical_ui(ui) or "") in self._descriptors

    def descriptor(self, ui: str) -> Descriptor | None:
        """The full record of a C/F descriptor (or one of their ancestors); None otherwise."""
        return self._descriptors.get(canonical_ui(ui) or "")

    def name(self, ui: str) -> str | None:
        """The MeSH heading of any descriptor or mapped SCR UI, in any tree; None if unknown."""
        return self._names.get(canonical_ui(ui) or "")

    def ancestors(self, ui: str) -> frozenset[str]:
        """Every descriptor whose tree number is a proper prefix of one of ui's (MeSH's own)."""
        return self._climb(canonical_ui(ui) or "", clinical=False)

    def is_under(self, ui: str, ancestor: str) -> bool:
        return (canonical_ui(ancestor) or "") in self.ancestors(ui)

    def match_keys_for(self, ui: str) -> frozenset[str]:
        """The subscriptions that catch a study carrying ui (see the module docstring)."""
        canonical = canonical_ui(ui)
        if canonical is None:
            return frozenset()
        keys = self._climb(canonical, clinical=True) | {canonical}
        return frozenset(k for k in keys if k not in GENERIC)

    @functools.lru_cache(maxsize=8192)  # noqa: B019 - one Vocabulary per process
    def _climb(self, ui: str, *, clinical: bool) -> frozenset[str]:
        found: set[str] = set()
        descriptor = self._descriptors.get(ui)
        if descriptor is None:
            return frozenset()
        for tree in descriptor.tree_numbers:
            child = ui
            while "." in tree:
                tree = tree.rsplit(".", 1)[0]
                parent = self._by_tree.get(tree)
                if parent is None:
                    break
                if clinical and (child, parent) in EXCLUDED_EDGES:
                    break
                found.add(parent)
                child = parent
        if clinical:
            for reached in (ui, *found):
                for parent in _ADDED_PARENTS.get(reached, ()):
                    found |= {parent, *self._climb(parent, clinical=True)}
        return frozenset(found)

    def acronyms(self, ui: str) -> tuple[str, ...]:
        """The abbreviations that resolve to ui (the other way of the acronym table)."""
        canonical = canonical_ui(ui)
        return tuple(
            sorted(a for a, e in self._acronyms.items() if e.uis == (canonical,) and a.isupper())
        )

    # -- resolving ----------------------------------------------------------------------------

    def resolve(self, text: str) -> Resolution:
        """The descriptors a typed condition (or a study's condition or keyword) means.

        Per segment (commas, brackets, slashes split a text): the whole segment first (exact key,
        abbreviation, family variant, any word order), else the longest known terms inside it,
        non-overlapping, longest first. Qualifiers such as "Recurrence" or "Neoplasm Metastasis"
        found next to something more specific are dropped. Empty when nothing is known: the caller
        falls back to text.
        """
        text = text[:MAX_TEXT]
        found = list(self._scan(text, whole=True))
        return _resolution(text, found)

    def find_in_text(self, text: str) -> frozenset[str]:
        """Descriptors named anywhere in free text (titles, keywords, conditions)."""
        return frozenset(
            ui for entry, _ in self._scan(text[:MAX_TEXT], whole=False) for ui in entry.uis
        )

    def _scan(self, text: str, *, whole: bool) -> Iterator[tuple[_Entry, str]]:
        if whole and _SEGMENT.search(text):
            # "Carcinoma, Non-Small-Cell Lung": MeSH's inverted forms carry commas
            tokens = _tokens(text)
            entry = self._whole(tokens, alone=False) if 1 < len(tokens) <= 12 else None
            if entry is not None:
                yield entry, text.strip()
                return
        segments = [s for s in _SEGMENT.split(text) if s.strip()]
        alone = len(segments) == 1 and len(_raw_words(segments[0])) == 1
        words = _raw_words(text)
        shouting = sum(w.isalpha() for w in words) >= 4 and text.upper() == text
        for segment in segments:
            tokens = _tokens(segment)
            if not tokens:
                continue
            if whole:
                entry = self._whole(tokens, alone=alone)
                if entry is not None:
                    yield entry, segment.strip()
                    continue
            yield from self._ngrams(tokens, strict_ok=not shouting)

    def _whole(self, tokens: list[_Token], *, alone: bool) -> _Entry | None:
        key = " ".join(t.key for t in tokens)
        if len(tokens) == 1:
            entry = self._acronym(tokens[0].raw, alone=alone, strict_ok=True)
            if entry is not None:
                return entry
        entry = self._index.get(key) or self._lookup_family(key)
        if entry is None:
            bag = self._bag.get(bag_key(key))
            if bag is not None:
                entry = _Entry(KIND_BAG, bag.uis, bag.display)
        return entry

    def _lookup_family(self, key: str) -> _Entry | None:
        fam = family_key(key, query=True)
        if fam == key:
            return self._family.get(key)
        entry = self._index.get(fam) or self._family.get(fam)
        return _Entry(KIND_FAMILY, entry.uis, entry.display) if entry else None

    def _acronym(self, raw: str, *, alone: bool, strict_ok: bool) -> _Entry | None:
        """An abbreviation as written ("NSCLC", "NETs"); in any case only as the whole input."""
        word = raw.strip()
        for candidate in (word, word[:-1] if len(word) > 2 and word.endswith("s") else ""):
            entry = self._acronyms.get(candidate)
            allowed = strict_ok or candidate not in self._acronym_strict
            if entry is not None and allowed and (candidate == word or candidate.isupper()):
                return entry
        if alone:
            abbr = self._acronym_folded.get(word.casefold())
            if abbr is not None and abbr not in self._acronym_strict:
                return self._acronyms[abbr]
        return None

    @functools.cached_property
    def _acronym_folded(self) -> dict[str, str]:
        folded: dict[str, str] = {}
        for abbr in sorted(self._acronyms):
            folded.setdefault(abbr.casefold(), abbr)
        return folded

    def _ngrams(self, tokens: list[_Token], *, strict_ok: bool) -> Iterator[tuple[_Entry, str]]:
        spans: list[tuple[int, int, _Entry]] = []
        n = len(tokens)
        for i in range(n):
            acro = self._acronym(tokens[i].raw, alone=False, strict_ok=strict_ok)
            if acro is not None:
                spans.append((i, i + 1, acro))
            if tokens[i].key not in self._first_words:
                continue
            for j in range(min(n, i + self._max_words), i, -1):
                key = " ".join(t.key for t in tokens[i:j])
                entry = self._index.get(key) or self._lookup_family(key)
                if entry is not None:
                    spans.append((i, j, entry))
                    break  # the longest from i; shorter ones from i would overlap it
        spans.sort(key=lambda s: (s[0] - s[1], s[0]))
        taken = [False] * n
        chosen: list[tuple[int, int, _Entry]] = []
        for start, end, entry in spans:
            if any(taken[start:end]):
                continue
            for k in range(start, end):
                taken[k] = True
            chosen.append((start, end, entry))
        chosen.sort(key=lambda s: s[0])
        for start, end, entry in chosen:
            raws: list[str] = []
            for t in tokens[start:end]:
                if not raws or raws[-1] is not t.raw:
                    raws.append(t.raw)
            yield entry, " ".join(raws)

    # -- words for people ---------------------------------------------------------------------

    @functools.cached_property
    def _common_words(self) -> frozenset[str]:
        counts: dict[str, int] = {}
        for name in self._names.values():
            for word in set(_SPLIT.split(name.casefold())):
                counts[word] = counts.get(word, 0) + 1
        return frozenset(w for w, c in counts.items() if c >= 3)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one Vocabulary per process
    def label(self, ui: str) -> str:
        """Words a patient understands for a descriptor, in sentence case ("Lung cancer")."""
        canonical = canonical_ui(ui) or ""
        if canonical in LABELS:
            return LABELS[canonical]
        descriptor = self._descriptors.get(canonical)
        if descriptor is None:
            return self._names.get(canonical, ui)
        best = min(_label_candidates(descriptor), key=lambda t: _label_score(t, descriptor))
        return self._sentence_case(best)

    def _sentence_case(self, term: str) -> str:
        words = term.split(" ")
        out = []
        for word in words:
            parts = word.split("-")
            fixed = []
            for part in parts:
                fixed.append(part if self._keeps_capital(part) else part.lower())
            out.append("-".join(fixed))
        text = " ".join(out)
        return text[:1].upper() + text[1:]

    def _keeps_capital(self, word: str) -> bool:
        """Acronyms and proper names keep their capitals ("HIV", "Crohn", "Merkel")."""
        if not word[:1].isupper() or not word[1:].islower():
            return True
        folded = word.casefold()
        return folded in self._eponyms

    @functools.cached_property
    def _eponyms(self) -> frozenset[str]:
        found: set[str] = set()
        for descriptor in self._descriptors.values():
            for term in descriptor.terms:
                found.update(m.casefold() for m in _EPONYM_RE.findall(term))
            named = _NAMED_RE.match(descriptor.name)
            if named and named.group(1).casefold() not in self._common_words:
                found.add(named.group(1).casefold())
        return frozenset(found)

    def describe(self, ui: str) -> str:
        """A one-line description: "lung cancer — including non-small cell and small cell ..."."""
        canonical = canonical_ui(ui) or ""
        label = self.label(canonical)
        narrower = self._best_known_narrower(canonical)
        if not narrower:
            return self._lower(label)
        names = [self._lower(self.label(n)) for n in narrower]
        head = self._lower(label)
        names = _shorten_shared_tail(names, head)
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"{head} — including {listed}"

    def _lower(self, label: str) -> str:
        first = label.split(" ", 1)[0].split("-", 1)[0]
        return label if self._keeps_capital(first) else label[:1].lower() + label[1:]

    def _best_known_narrower(self, ui: str, limit: int = 2) -> list[str]:
        if ui in BEST_KNOWN:
            return list(BEST_KNOWN[ui])
        if ui not in self._descriptors or ui in GENERIC:
            return []
        depth = self._depth(ui)
        trees = self._sorted_trees
        candidates: set[str] = set()
        for tree in self._descriptors[ui].tree_numbers:
            # Descendants by tree number prefix, at most three levels down.
            lo = bisect.bisect_left(trees, tree + ".")
            hi = bisect.bisect_left(trees, tree + ".\uffff", lo)
            candidates.update(
                self._by_tree[t] for t in trees[lo:hi] if t.count(".") - tree.count(".") <= 3
            )
        found = [
            d
            for d in candidates
            if d != ui and ui in self.match_keys_for(d) and self._depth(d) <= depth + 3
        ]
        found.sort(key=lambda d: (-self._popularity(d), d))
        return found[:limit] if len(found) > 1 else found

    @functools.cached_property
    def _sorted_trees(self) -> list[str]:
        return sorted(self._by_tree)

    def _depth(self, ui: str) -> int:
        trees = self._descriptors[ui].tree_numbers
        return min((t.count(".") + 1 for t in trees), default=0)

    @functools.cached_property
    def _acronym_uis(self) -> frozenset[str]:
        return frozenset(a.ui for a in ACRONYMS)

    @functools.cached_property
    def _term_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self._index.values():
            if entry.kind == KIND_SCR:
                continue
            for ui in entry.uis:
                counts[ui] = counts.get(ui, 0) + 1
        return counts

    def _popularity(self, ui: str) -> int:
        """How well known a descriptor is likely to be: acronyms, synonyms, shallow depth."""
        return (
            5 * (ui in self._acronym_uis)
            + 4 * self._descendants.get(ui, 0).bit_length()
            + min(self._term_counts.get(ui, 0), 20) // 4
            + 4 * (ui in self._cancers)
            - 2 * self._depth(ui)
        )

    @functools.cached_property
    def _cancers(self) -> frozenset[str]:
        """Descriptors MeSH also calls "... cancer": what most trial seekers type."""
        return frozenset(
            ui
            for ui, d in self._descriptors.items()
            if any("cancer" in t.casefold().split() for t in d.terms)
        )

    @functools.cached_property
    def _descendants(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ui in self._descriptors:
            for ancestor in self._climb(ui, clinical=False):
                counts[ancestor] = counts.get(ancestor, 0) + 1
        return counts

    # -- autocomplete -------------------------------------------------------------------------

    @functools.cached_property
    def _words(self) -> tuple[list[str], dict[str, list[str]]]:
        """Sorted distinct non-first words of keys, and the keys each appears in."""
        postings: dict[str, list[str]] = {}
        for key in self._keys:
            for word in key.split(" ")[1:]:
                postings.setdefault(word, []).append(key)
        return sorted(postings), postings

    def suggest(self, q: str, limit: int = 8) -> list[Suggestion]:
        """Condition suggestions for a signup form, best first, one per descriptor."""
        if limit <= 0:
            return []
        return list(self._suggest(q[:100], limit))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one Vocabulary per process
    def _suggest(self, q: str, limit: int) -> tuple[Suggestion, ...]:
        key = normalize_term(q)
        if len(key) < 2:
            return ()
        scored: dict[str, tuple[tuple[int, bool, int, int, int], str]] = {}

        def offer(tier: int, entry: _Entry, words: int = 1) -> None:
            for ui in entry.uis:
                if ui in GENERIC or ui not in self._descriptors:
                    continue
                score = 3 * words - self._popularity(ui)
                rank = (tier, entry.kind == KIND_SCR, score, entry.kind, len(entry.display))
                if ui not in scored or rank < scored[ui][0]:
                    scored[ui] = (rank, entry.display)

        abbr = self._acronym_folded.get(q.strip().casefold())
        if abbr is not None:  # a person picks from the list: "ms" may offer Multiple Sclerosis
            offer(0, self._acronyms[abbr])
        exact = self._index.get(key) or self._lookup_family(key)
        if exact is not None:
            offer(0, exact)
        start = bisect.bisect_left(self._keys, key)
        end = bisect.bisect_left(self._keys, key + "\uffff", start)
        for k in self._keys[start:end]:
            offer(1, self._index[k], k.count(" ") + 1)
        if len(scored) < limit and len(key) >= 3:
            words, postings = self._words
            *full, last = key.split(" ")
            lo = bisect.bisect_left(words, last)
            for word in words[lo : lo + 50]:
                if not word.startswith(last):
                    break
                for k in postings[word][:200]:
                    if all(f in k.split(" ") for f in full):
                        offer(2, self._index[k], k.count(" ") + 1)
        best = sorted(scored.items(), key=lambda item: item[1][0])[:limit]
        return tuple(
            Suggestion(ui, self._descriptors[ui].name, self.label(ui), matched)
            for ui, (_rank, matched) in best
        )


# ---------------------------------------------------------------------------------------------
# helpers

# Adjectives and disease words: lower case in a label even when rare ("Paraganglioma").
_COMMON_ENDINGS = (
    "al", "ic", "ar", "ous", "ary", "ive", "oid", "ine", "ed", "ing", "oma", "itis", "osis",
    "emia", "pathy", "ia", "ism", "ase", "cyte", "plasia", "trophy", "algia", "cele",
)  # fmt: skip
_EPONYM_RE = re.compile(r"\b([A-Z][a-z]+)'s\b")
_NAMED_RE = re.compile(r"^([A-Z][a-z]+) (?:Disease|Syndrome|Sarcoma|Lymphoma|Cell)\b")


def _raw_words(segment: str) -> list[str]:
    return [w for w in _SPLIT.split(_POSSESSIVE.sub("", segment.replace("&", " and "))) if w]


@functools.lru_cache(maxsize=1 << 16)
def _word_keys(raw: str) -> tuple[str, ...]:
    return tuple(_token(w) for w in _SPLIT.split(_fold(raw)) if w)


def _tokens(segment: str) -> list[_Token]:
    out = [_Token(key, raw) for raw in _raw_words(segment) for key in _word_keys(raw)]
    return out[:MAX_TOKENS]


def _resolution(text: str, found: Iterable[tuple[_Entry, str]]) -> Resolution:
    matches = [
        Match(ui, entry.display, KINDS[entry.kind], words)
        for entry, words in found
        for ui in entry.uis
    ]
    if len(matches) > 1 or any(m.text != text.strip() for m in matches):
        kept = [m for m in matches if m.mesh_id not in _QUALIFIERS]
        matches = kept or matches
    seen: dict[str, Match] = {}
    for m in matches:
        seen.setdefault(m.mesh_id, m)
    return Resolution(text, tuple(seen), tuple(seen.values()))


def _label_candidates(descriptor: Descriptor) -> Iterator[str]:
    for term in descriptor.terms:
        yield uninvert(term) or term


def _label_score(term: str, descriptor: Descriptor) -> tuple[int, int, int]:
    lower = term.casefold()
    penalty = 0
    if _ACRONYM_LIKE.match(term):
        penalty += 10
    if "neoplasm" in lower:
        penalty += 3
    name = uninvert(descriptor.name) or descriptor.name
    if "cancer" in lower and family_key(normalize_term(term), query=True) == family_key(
        normalize_term(name), query=True
    ):
        penalty -= 2  # "Lung Cancer" for Lung Neoplasms, not "Adult Liver Cancer" for HCC
    if " of the " in lower or " of " in lower:
        penalty += 2
    if term == descriptor.name or uninvert(descriptor.name) == term:
        penalty -= 1
    return (penalty, len(term), 0)


_ACRONYM_LIKE = re.compile(r"^[A-Z0-9-]{2,8}$")


def _shorten_shared_tail(names: list[str], head: str) -> list[str]:
    """ "non-small cell lung cancer", "small cell lung cancer" under "lung cancer" -> "... and
    small cell lung cancer" stays readable: drop the repeated tail from all but the last."""
    tail = head.casefold()
    if len(names) > 1 and all(n.casefold().endswith(" " + tail) for n in names):
        return [n[: -len(tail) - 1] for n in names[:-1]] + [names[-1]]
    return names
