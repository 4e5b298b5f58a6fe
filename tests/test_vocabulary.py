"""The MeSH vocabulary: resolving what patients type, the matching rule, labels, suggestions."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from notifier.core.vocabulary import (
    ACRONYMS,
    EXCLUDED_EDGES,
    GENERIC,
    VOCAB_PATH,
    Vocabulary,
    canonical_ui,
    normalize_term,
    vocabulary,
)

REPO = Path(__file__).resolve().parents[1]
LUNG, NSCLC, SCLC = "D008175", "D002289", "D055752"
NEOPLASMS, NET, MELANOMA = "D009369", "D018358", "D008545"
LEUKEMIA, ALL_ = "D007938", "D054198"


@pytest.fixture(scope="module")
def v() -> Vocabulary:
    return vocabulary()


def ids(v: Vocabulary, text: str) -> tuple[str, ...]:
    return v.resolve(text).mesh_ids


# -- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Macular Oedema", "macular edema"),
        ("Tumours", "tumor"),
        ("Haemophilia", "hemophilia"),
        ("Leukaemias", "leukemia"),
        ("Anaemia", "anemia"),
        ("Oesophageal Neoplasms", "esophageal neoplasm"),
        ("Paediatric", "pediatric"),
        ("Oestrogen", "estrogen"),
        ("Haematological", "hematological"),
        ("Diarrhoea", "diarrhea"),
        ("Foetal", "fetal"),
        ("Ischaemic Stroke", "ischemic stroke"),
        ("Carcinomas", "carcinoma"),
        ("Diseases", "disease"),
        ("Metastases", "metastasis"),
        ("Lymphomas", "lymphoma"),
        ("Neoplasms", "neoplasm"),
        ("Crohn's Disease", "crohn disease"),
        ("Non-Small-Cell  Lung", "non small cell lung"),
        ("Sjögren", "sjogren"),
    ],
)
def test_normalize_term_folds_spelling_plural_and_punctuation(a: str, b: str) -> None:
    assert normalize_term(a) == normalize_term(b)


@pytest.mark.parametrize("word", ["abscess", "herpes", "diabetes", "arthritis", "sepsis", "virus"])
def test_words_that_only_look_plural_keep_their_ending(word: str) -> None:
    assert normalize_term(word) == word


def test_canonical_ui_strips_padding() -> None:
    assert canonical_ui("D000055752") == "D055752"
    assert canonical_ui(" d055752 ") == "D055752"
    assert canonical_ui("D000086382") == "D000086382"  # NLM's own 9-digit UI stays 9 digits
    assert canonical_ui("D86382") == "D000086382"
    assert canonical_ui("C000596385") == "C000596385"
    assert canonical_ui("NCT01234567") is None
    assert canonical_ui("D000000") is None


def test_padded_ids_work_everywhere(v: Vocabulary) -> None:
    assert v.name("D000055752") == "Small Cell Lung Carcinoma"
    assert v.is_under("D000002289", "D008175")
    assert v.match_keys_for("D000055752") == v.match_keys_for(SCLC)


# -- resolving ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lung cancer", LUNG),
        ("Lung Cancers", LUNG),
        ("cancer of the lung", LUNG),
        ("lung tumour", LUNG),
        ("solid tumors", NEOPLASMS),
        ("solid tumour", NEOPLASMS),
        ("cancer", NEOPLASMS),
        ("neuroendocrine tumour", NET),
        ("NETs", NET),
        ("myeloma", "D009101"),
        ("leukemia", LEUKEMIA),
        ("leukaemia", LEUKEMIA),
        ("Acute Lymphoblastic Leukaemia", ALL_),
        ("macular oedema", "D008269"),
        ("heart attack", "D009203"),
        ("NSCLC", NSCLC),
        ("nsclc", NSCLC),
        ("non-small cell lung cancer", NSCLC),
        ("Carcinoma, Non-Small-Cell Lung", NSCLC),
        ("non small cell lung carcinoma", NSCLC),
        ("lung carcinoma, non-small-cell", NSCLC),
        ("small cell lung carcinoma (SCLC)", SCLC),
        ("Rheumatoid Arthritis", "D001172"),
        ("acute myeloid leukemia", "D015470"),
        ("AML", "D015470"),
        ("CLL", "D015451"),
        ("DLBCL", "D016403"),
        ("HCC", "D006528"),
        ("COPD", "D029424"),
        ("Alzheimer's", "D000544"),
        ("Crohn's disease", "D003424"),
        ("type 2 diabetes", "D003924"),
        ("bladder carcinoma", "D001749"),
        ("Somatostatin Receptor-positive Neuroendocrine Tumor", NET),
        ("Untreated Advanced or Recurrent Thymic Carcinomas", "D013945"),
        ("Advanced Hepatocellular Carcinoma", "D006528"),
        ("NSCLC Stage IV", NSCLC),
        ("EGFR-mutated Non-Small Cell Lung Cancer", NSCLC),
    ],
)
def test_resolve_what_people_mean(v: Vocabulary, text: str, expected: str) -> None:
    assert ids(v, text) == (expected,)


def test_resolve_a_long_study_condition_finds_each_known_term(v: Vocabulary) -> None:
    text = (
        "MSIhi or dMMR Advanced Unresectable or Metastatic Solid Tumors, "
        "Including Colorectal Cancers"
    )
    assert set(ids(v, text)) == {NEOPLASMS, "D015179"}


def test_resolution_says_how(v: Vocabulary) -> None:
    assert v.resolve("NSCLC").how == ("acronym",)
    assert v.resolve("lung cancer").how == ("entry term",)
    assert v.resolve("Leukemia").how == ("name",)
    assert v.resolve("lung tumour").how == ("family variant",)
    assert v.resolve("lung cancer").matches[0].term == "Lung Cancer"


def test_all_and_ms_only_as_upper_case_abbreviations(v: Vocabulary) -> None:
    assert ids(v, "ALL") == (ALL_,)
    assert ids(v, "all") == ()
    assert ids(v, "All patients") == ()
    assert ids(v, "MS") == ("D009103",)
    assert v.find_in_text("relapsing MS in adults") == frozenset({"D009103"})
    assert v.find_in_text("all ms of tissue were weighed") == frozenset()
    assert v.find_in_text("A STUDY OF ALL PATIENTS") == frozenset()  # shouting is not ALL


def test_unknown_text_resolves_to_nothing(v: Vocabulary) -> None:
    assert not v.resolve("asdf qwerty")
    assert v.resolve("asdf qwerty").mesh_ids == ()
    assert not v.resolve("")


def test_qualifiers_are_dropped_next_to_a_condition(v: Vocabulary) -> None:
    assert ids(v, "Recurrent Breast Cancer with Metastases") == ("D001943",)
    assert ids(v, "Recurrence") == ("D012008",)  # alone, it is what it says


def test_find_in_text(v: Vocabulary) -> None:
    found = v.find_in_text(
        "A Phase 3 Study of Drug X in EGFR-mutant NSCLC and Small Cell Lung Cancer"
    )
    assert found == frozenset({NSCLC, SCLC})
    assert v.find_in_text("hearing aids for adults").isdisjoint({"D000163"})  # not AIDS


def test_acronym_table_matches_mesh(v: Vocabulary) -> None:
    for acro in ACRONYMS:
        assert v.name(acro.ui) == acro.heading, acro.abbr
    assert "NSCLC" in v.acronyms(NSCLC)  # both ways
    assert "SCLC" in v.acronyms("D000055752")


# -- the tree and the matching rule -------------------------------------------------------------


def test_ancestors_come_from_tree_numbers(v: Vocabulary) -> None:
    assert {LUNG, NEOPLASMS, "D008171"} <= v.ancestors(NSCLC)  # also Lung Diseases (C08)
    assert v.is_under(ALL_, LEUKEMIA)
    assert not v.is_under(LEUKEMIA, ALL_)
    assert v.ancestors(NEOPLASMS) == frozenset()


def test_melanoma_is_filed_under_net_but_does_not_match_it(v: Vocabulary) -> None:
    assert v.is_under(MELANOMA, NET)  # MeSH says so
    assert NET not in v.match_keys_for(MELANOMA)  # a NET subscriber does not get melanoma
    assert NEOPLASMS in v.match_keys_for(MELANOMA)  # a cancer subscriber does
    assert "D012878" in v.match_keys_for(MELANOMA)  # Skin Neoplasms


def test_sclc_is_not_a_net(v: Vocabulary) -> None:
    assert not v.is_under(SCLC, NET)
    assert NET not in v.match_keys_for(SCLC)


@pytest.mark.parametrize(
    ("study", "subscription"),
    [
        (NSCLC, LUNG),
        (SCLC, LUNG),
        (ALL_, LEUKEMIA),
        (NSCLC, NEOPLASMS),
        ("D001943", NEOPLASMS),
        ("D002276", NET),  # carcinoid tumour is a NET
        ("D003924", "D003920"),  # type 2 diabetes -> diabetes
    ],
)
def test_a_subscriber_gets_narrower_studies(v: Vocabulary, study: str, subscription: str) -> None:
    assert subscription in v.match_keys_for(study)


@pytest.mark.parametrize(
    ("study", "subscription"),
    [
        (MELANOMA, NET),
        ("D009442", NET),  # schwannoma
        ("D005909", "D009373"),  # glioblastoma is not a germ cell tumour
        ("D001943", "D012871"),  # breast cancer is not a skin disease
        ("D011085", NEOPLASMS),  # polycystic ovary syndrome is not cancer
        ("D009101", "D002318"),  # myeloma is not a cardiovascular disease
        ("D009157", NEOPLASMS),  # myasthenia gravis
        (LUNG, NSCLC),  # broader never matches narrower
    ],
)
def test_non_clinical_edges_do_not_match(v: Vocabulary, study: str, subscription: str) -> None:
    assert subscription not in v.match_keys_for(study)


def test_generic_headings_are_never_keys(v: Vocabulary) -> None:
    keys = v.match_keys_for(NSCLC) | v.match_keys_for("D009362") | v.match_keys_for(MELANOMA)
    assert keys.isdisjoint(GENERIC)
    assert "D009371" in v.ancestors(NSCLC)  # Neoplasms by Site is an ancestor, not a key


def test_curated_tables_are_real_mesh_edges(v: Vocabulary) -> None:
    for child, parent in EXCLUDED_EDGES:
        assert v.is_under(child, parent), (child, parent)
    for ui in GENERIC:
        assert v.descriptor(ui) is not None, ui


# -- names and words for people -----------------------------------------------------------------


def test_every_descriptor_can_be_named(v: Vocabulary) -> None:
    assert v.name("D053842") == "Microsatellite Instability"
    assert v.name("D012008") == "Recurrence"
    assert v.name("D000374") == "Aggression"
    assert v.name("D000001") == "Calcimycin"
    assert v.descriptor("D000001") is None  # a chemical: named, not a condition
    assert v.name("D999999") is None
    assert v.mesh_year == 2024


def test_labels_are_lay_words(v: Vocabulary) -> None:
    assert v.label(LUNG) == "Lung cancer"
    assert v.label(NSCLC) == "Non-small cell lung cancer"
    assert v.label(SCLC) == "Small cell lung cancer"
    assert v.label("D009203") == "Heart attack"
    assert v.label("D029424") == "Chronic obstructive pulmonary disease"
    assert v.label("D000544") == "Alzheimer disease"


def test_describe_names_the_best_known_narrower(v: Vocabulary) -> None:
    assert v.describe(LUNG) == "lung cancer — including non-small cell and small cell lung cancer"
    assert v.describe(NEOPLASMS).startswith("cancer — including breast")
    assert v.describe(SCLC) == "small cell lung cancer"


# -- suggestions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "first"),
    [
        ("heart attack", "D009203"),
        ("nsclc", NSCLC),
        ("lung canc", LUNG),
        ("Lung Cancer", LUNG),
        ("canc", NEOPLASMS),
        ("leuk", LEUKEMIA),
        ("diab", "D003920"),
        ("breast", "D001943"),
        ("myeloma", "D009101"),
    ],
)
def test_suggest_ranks_what_patients_mean_first(v: Vocabulary, q: str, first: str) -> None:
    suggestions = v.suggest(q)
    assert suggestions[0].mesh_id == first


def test_suggestions_are_one_per_descriptor_with_labels(v: Vocabulary) -> None:
    suggestions = v.suggest("lung canc", limit=8)
    assert len({s.mesh_id for s in suggestions}) == len(suggestions)
    assert {NSCLC, SCLC} <= {s.mesh_id for s in suggestions}
    top = suggestions[0]
    assert (top.name, top.label, top.matched) == ("Lung Neoplasms", "Lung cancer", "Lung Cancer")
    assert not set(GENERIC) & {s.mesh_id for s in v.suggest("neoplasms by")}


def test_suggest_nothing_for_junk(v: Vocabulary) -> None:
    assert v.suggest("x" * 200) == []
    assert v.suggest("q") == []
    assert v.suggest("zzzzqqq") == []


# -- speed, size, determinism -------------------------------------------------------------------


def test_load_time_and_memory() -> None:
    code = (
        "import resource, time, json\n"
        "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "from notifier.core.vocabulary import vocabulary\n"
        "vocabulary()\n"
        "dt = time.perf_counter() - t\n"
        "r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps([dt, (r1 - r0) / 1024]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO
    )
    seconds, megabytes = (float(x) for x in out.stdout.strip().strip("[]").split(","))
    assert seconds < 1.5  # generous for slow CI; about 0.35 s here
    assert megabytes < 100


def test_lookups_are_much_faster_than_loading(v: Vocabulary) -> None:
    t = time.perf_counter()
    Vocabulary.load(VOCAB_PATH)
    load = time.perf_counter() - t
    texts = ["lung cancer", "EGFR-mutated Non-Small Cell Lung Cancer", "x" * 200, "NSCLC Stage IV"]
    t = time.perf_counter()
    for _ in range(50):
        for text in texts:
            v.resolve(text)
            v.find_in_text(text)
    per_resolve = (time.perf_counter() - t) / (50 * len(texts))
    assert per_resolve * 100 < load
    junk = " ".join(["qwzx"] * 40)
    t = time.perf_counter()
    v.resolve(junk)
    assert (time.perf_counter() - t) * 100 < load
    v._suggest.cache_clear()
    t = time.perf_counter()
    for q in ["heart att", "nsclc", "lung canc", "breast cancer", "multiple scl", "x" * 200]:
        v.suggest(q)
    assert (time.perf_counter() - t) / 6 * 100 < load


def test_shipped_file_is_small_and_says_its_year() -> None:
    assert VOCAB_PATH.stat().st_size < 4_000_000
    assert "mesh2024" in VOCAB_PATH.name


def _mesh_dir() -> Path | None:
    for parent in REPO.parents:
        candidate = parent / "shared" / "data" / "mesh"
        if (candidate / "mesh2024_descriptors.tsv").exists():
            return candidate
    return None


@pytest.mark.skipif(_mesh_dir() is None, reason="MeSH source files not available")
def test_generator_is_deterministic_and_matches_the_shipped_file(tmp_path: Path) -> None:
    out = tmp_path / "vocab.json.gz"
    subprocess.run(
        [sys.executable, "-m", "notifier.ops.build_vocabulary", "--mesh", str(_mesh_dir()),
         "--out", str(out)],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    assert out.read_bytes() == VOCAB_PATH.read_bytes()
