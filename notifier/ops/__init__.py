"""Operator commands, preview and sample events."""
