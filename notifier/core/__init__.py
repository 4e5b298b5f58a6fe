"""The rules: matching, normalisation, signup, confirmation, preferences, suppression, tokens, signing, events."""
