"""The version of virtplan."""

__version__ = "0.1.0"
