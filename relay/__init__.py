"""The conversation relay: phone numbers, web calls and SMS for AI agents."""

__version__ = "0.1.0"

__all__ = ["__version__"]
