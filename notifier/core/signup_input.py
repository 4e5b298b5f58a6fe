"""What a signup may ask for: an address, a study, a condition or both, how often (pydantic)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from email_validator import EmailNotValidError, validate_email
from publicsuffixlist import PublicSuffixList
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from notifier.core.concepts import Concept, concept_of
from notifier.core.matching import MATCH_KEY_MAX, NEW_STUDY, STARTS_RECRUITING
from notifier.core.normalize import (
    CONDITION_MAX,
    CONDITION_MIN,
    clean_label,
    has_control_chars,
    normalize_condition,
    normalize_mesh_id,
    normalize_nct,
)
from notifier.core.vocabulary import vocabulary


def normalize_email(value: str) -> str:
    """The one stored form of an address (signup, admin, bounces): email-validator's
    normalisation (Unicode NFC, IDNA domain), lower-cased. Raises EmailNotValidError."""
    return validate_email(value.strip(), check_deliverability=False).normalized.lower()


EVIDENCE_MAX = 512
# Free text that ends up in a confirmation mail must not be usable to carry a link or an address:
# a scheme, "www.", an "@", a dotted IPv4 address, or a host name under a public suffix.
_LINK_MARKS = re.compile(r"://|www\.|@|\b[0-9]{1,3}(\.[0-9]{1,3}){3}\b")
_HOSTNAME = re.compile(r"[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)+")
# Dots that IDNA treats as label separators and NFKC does not fold to ".".
_DOTS = str.maketrans({"\u3002": ".", "\uff61": ".", "\ufe52": "."})


@cache
def _public_suffixes() -> PublicSuffixList:
    # The list bundled with the package (kept current by its releases); never fetched at run
    # time. accept_unknown=False: "e.g" or "St.John" do not end in a suffix, so are not hosts.
    return PublicSuffixList(accept_unknown=False)


def looks_like_link(text: str) -> bool:
    """Whether `text` carries a link or an address, after NFKC (a fullwidth full stop and at
    sign, U+FF0E and U+FF20, are a dot and an "@" to a mail client): "bit.ly/x",
    "secure-login.co.uk/verify"."""
    folded = unicodedata.normalize("NFKC", text).translate(_DOTS).casefold()
    if _LINK_MARKS.search(folded):
        return True
    psl = _public_suffixes()
    for match in _HOSTNAME.finditer(folded):
        host = match.group(0)
        suffix = psl.publicsuffix(host)
        if suffix is not None and suffix != host:
            return True
    return False


_OPTIONAL = frozenset({"study", "condition", "mesh_id", "timezone", "redirect", "source"})
_EMPTY_MEANS = {"broad": False, "frequency": "instant"}  # an unticked box, an unset select

Frequency = Literal["instant", "daily", "weekly"]
# The change kinds a study subscription may choose (the event schema's), and a condition's.
STUDY_CHANGES = (
    "new_study",
    "status_changed",
    "results_posted",
    "dates_changed",
    "recruitment_sites_changed",
    "conditions_changed",
    "study_updated",
    "study_unavailable",
)
CONDITION_CHANGES = (NEW_STUDY, STARTS_RECRUITING)


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def origin_of(url: str) -> str | None:
    """'HTTPS://Trials.example.org:443/x' -> 'https://trials.example.org'; None if not http(s)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.username:
        return None
    scheme = parts.scheme.lower()
    default = 443 if scheme == "https" else 80
    suffix = f":{port}" if port and port != default else ""
    return f"{scheme}://{parts.hostname.lower()}{suffix}"


def is_allowed_redirect(url: str, allowed_origins: list[str]) -> bool:
    if "\\" in url or not url.lower().startswith(("http://", "https://")):
        return False  # browsers read "\" as "/", which would let "//evil" through
    origin = origin_of(url)
    return origin is not None and origin in {origin_of(o) for o in allowed_origins}


@dataclass(frozen=True)
class Target:
    """One subscription a signup asks for: a study, or a condition with what it resolved to."""

    kind: str
    label: str
    match_key: str
    mesh_id: str | None = None
    requires: str | None = None  # a fact the study must have besides the descriptor
    resolved: list[dict[str, str]] | None = None  # what the typed text resolved to
    event_kinds: list[str] | None = None  # the `changes` chosen; None: the kind's default
    broad: bool = False


class SignupRequest(BaseModel):
    """POST /v1/subscriptions: an address and a study, a condition, or both (the study page's
    "this study, and new studies for its condition" box: one mail confirms the two)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    email: str = Field(description="the address to alert; normalised and lower-cased")
    study: str | None = Field(default=None, description="NCT id, e.g. NCT01234567 (any case)")
    condition: str | None = Field(
        default=None,
        validate_default=True,
        description=f"free text, {CONDITION_MIN}-{CONDITION_MAX} characters",
    )
    mesh_id: str | None = Field(default=None, description="MeSH id of the condition, D055752")
    broad: bool = Field(
        default=False,
        validate_default=True,
        description="kept for compatibility, no effect: every condition subscription catches "
        "narrower studies (see the README's Matching)",
    )
    changes: list[str] | None = Field(
        default=None,
        description="what to mail about. A study: any of "
        + ", ".join(STUDY_CHANGES)
        + " (default all). A condition: new_study and/or starts_recruiting (default new_study)",
    )
    frequency: Frequency = "instant"
    timezone: str | None = Field(default=None, description="IANA name, e.g. Europe/Paris")
    redirect: str | None = Field(
        default=None, description="form posts: where to send the browser; an allowed origin"
    )
    source: str | None = Field(
        default=None, description="page the form is on (consent evidence); default: Referer"
    )
    website: str = Field(default="", max_length=1000, description="honeypot: leave empty")

    @field_validator("*", mode="before")
    @classmethod
    def _plain_text(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):
            if has_control_chars(value):
                raise ValueError("must not contain line breaks or other control characters")
            if not value.strip() and info.field_name in _OPTIONAL:
                return None  # an HTML form sends its empty fields as ""
            if not value.strip() and info.field_name in _EMPTY_MEANS:
                return _EMPTY_MEANS[info.field_name]
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("an email address is required")
        try:
            return normalize_email(value)
        except EmailNotValidError as exc:
            reason = str(exc).rstrip(".")
            reason = reason[:1].lower() + reason[1:]
            raise ValueError(f"enter an email address like name@example.org ({reason})") from None

    @field_validator("study")
    @classmethod
    def _study(cls, value: str | None) -> str | None:
        if value is None:
            return None
        nct = normalize_nct(value)
        if nct is None:
            raise ValueError("must be NCT followed by 8 digits, e.g. NCT01234567")
        return nct

    @field_validator("condition")
    @classmethod
    def _condition(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Without "study" in info.data the study itself was invalid: one error is enough.
        if value is None and "study" in info.data and info.data["study"] is None:
            raise ValueError("give a study (NCT id), a condition, or both")
        if value is None:
            return None
        label = clean_label(value)
        if not CONDITION_MIN <= len(label) <= CONDITION_MAX:
            raise ValueError(f"must be {CONDITION_MIN} to {CONDITION_MAX} characters")
        if not any(ch.isalpha() for ch in label) or len(normalize_condition(label)) < 2:
            raise ValueError("must name a condition in words")
        if looks_like_link(label):
            raise ValueError("must name a condition, not a link or an address")
        if len("cond:" + normalize_condition(label)) > MATCH_KEY_MAX:
            raise ValueError("too long once normalised")
        return label

    @field_validator("mesh_id")
    @classmethod
    def _mesh(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        mesh = normalize_mesh_id(value)
        if mesh is None:
            raise ValueError("must be a MeSH id such as D000055752 or D055752")
        if info.data.get("condition", "") is None:
            raise ValueError("only goes with a condition")
        if mesh not in vocabulary():
            raise ValueError(f"{value} is not a MeSH {vocabulary().mesh_year} disease descriptor")
        return mesh

    @field_validator("broad")
    @classmethod
    def _broad(cls, value: bool, info: ValidationInfo) -> bool:
        if value and "mesh_id" in info.data and info.data["mesh_id"] is None:
            raise ValueError("needs a mesh_id: narrower terms are found through MeSH")
        return value

    @field_validator("changes", mode="before")
    @classmethod
    def _changes_list(cls, value: object) -> object:
        if isinstance(value, str):  # a form's single field: "status_changed,results_posted"
            return [part.strip() for part in value.split(",") if part.strip()] or None
        return value

    @field_validator("changes")
    @classmethod
    def _changes(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if not value:
            return None
        allowed = CONDITION_CHANGES if info.data.get("study") is None else STUDY_CHANGES
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise ValueError(f"unknown change kinds {unknown}; choose from {list(allowed)}")
        return [kind for kind in allowed if kind in value]  # one order, no repeats

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None and value not in _zones():
            raise ValueError("must be an IANA time zone name, e.g. Europe/Paris")
        return value

    @field_validator("redirect")
    @classmethod
    def _redirect(cls, value: str | None, info: ValidationInfo) -> str | None:
        allowed = (info.context or {}).get("allowed_origins", [])
        if value is not None and (len(value) > 2000 or not is_allowed_redirect(value, allowed)):
            raise ValueError("must be a URL on one of the site's allowed origins")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is not None and len(value) > EVIDENCE_MAX:
            raise ValueError(f"at most {EVIDENCE_MAX} characters")
        return value

    @property
    def targets(self) -> list[Target]:
        """What to subscribe to, the study first. The MeSH choice goes with the condition;
        `changes` with the study when there is one (it is checked against a study's kinds),
        else with the condition."""
        found = []
        if self.study:
            found.append(
                Target("study", self.study, f"study:{self.study}", event_kinds=self.changes)
            )
        if self.condition:
            concept = self.concept()
            found.append(
                Target(
                    "condition",
                    self.condition,
                    f"cond:{normalize_condition(self.condition)}",
                    concept.mesh_id,
                    concept.requires,
                    concept.stored,
                    None if self.study else self.changes,
                    self.broad,
                )
            )
        return found

    @property
    def kind(self) -> str:
        return self.targets[0].kind

    @property
    def label(self) -> str:
        return self.targets[0].label

    def concept(self) -> Concept:
        """What a condition matches: the site's mesh_id as is, or the typed text resolved."""
        return concept_of(self.condition or "", self.mesh_id)

    @property
    def match_key(self) -> str:
        return self.targets[0].match_key


def parse_signup(data: dict[str, Any], allowed_origins: list[str]) -> SignupRequest:
    """Validate a decoded body; raises pydantic.ValidationError (-> 422 with field errors)."""
    return SignupRequest.model_validate(data, context={"allowed_origins": allowed_origins})
