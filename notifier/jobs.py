"""Imports every module that registers arq jobs, so the worker sees one explicit list."""

# ruff: noqa: F401  # every import here is for its registration side effect
from notifier import confirmations, digests, events, fanout, maintenance, preferences, sending
