"""Errors a conversion raises; the router turns them into 400s naming the field."""

from __future__ import annotations


class ConversionError(ValueError):
    """A request the conversion refuses; ``param`` is the field (dotted path, e.g.
    ``tools[2].type``), reported to the client so they know what to change."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class UnsupportedField(ConversionError):
    """The request uses something the conversion cannot express for a chat backend."""


class InvalidField(ConversionError):
    """A field of the request has the wrong type (or is missing where it is required)."""
