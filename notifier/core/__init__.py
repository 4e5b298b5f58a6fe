"""The rules: matching, normalisation, signup, confirmation, preferences, suppression, tokens,
signing, the event model. No aiohttp, no aiosmtplib, no arq worker."""
