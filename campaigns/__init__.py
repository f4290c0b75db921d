"""Bulk voice-broadcast campaign worker on the EnableX Voice API."""

__version__ = "0.1.0"
