"""Errors a conversion raises; the router turns them into 400s naming the field."""

from __future__ import annotations


class UnsupportedField(ValueError):
    """The request uses something the conversion cannot express for a chat backend.

    ``param`` is the request field (dotted path, e.g. ``tools[2].type``), reported
    to the client so they know what to drop.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
