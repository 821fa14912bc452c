"""Audit image archives for AI-generated images."""

__version__ = "0.1.0"
