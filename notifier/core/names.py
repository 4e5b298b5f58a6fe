"""How a subscription is named to a person: a study by its title and NCT id (the NCT id alone
when the service knows no title), a condition by its label."""

from __future__ import annotations

from collections.abc import Mapping


def study_name(nct_id: str, titles: Mapping[str, str]) -> str:
    title = titles.get(nct_id)
    return f"“{title}” ({nct_id})" if title else nct_id


def subscription_name(kind: str, label: str, titles: Mapping[str, str]) -> str:
    return study_name(label, titles) if kind == "study" else label
