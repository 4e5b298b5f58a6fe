"""Models, the engine and sessions, shared queries and the migrations runner."""

# Every table on Base.metadata (migrations, tests) whichever data module is imported first.
from notifier.data import study_tables as study_tables
