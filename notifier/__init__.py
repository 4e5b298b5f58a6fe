"""notifier: email alerts about clinical-trial changes."""

__version__ = "0.1.0"
