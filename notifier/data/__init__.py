"""Models, the engine and sessions, shared queries and the migrations runner."""
