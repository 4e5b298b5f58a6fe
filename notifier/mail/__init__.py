"""Mail rendering only: messages, MIME, templates, links, change summaries, reasons, labels."""
