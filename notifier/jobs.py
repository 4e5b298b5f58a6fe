"""Imports every module that registers arq jobs, so the worker sees one explicit list."""

from notifier import maintenance, preferences  # noqa: F401  # registers jobs
