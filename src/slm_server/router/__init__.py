"""The routing service: one OpenAI-compatible endpoint in front of the backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slm_server.router.app import RouterApp

__all__ = ["RouterApp"]


def __getattr__(name: str) -> object:
    # Loaded when first asked for, not with the package: the app imports modules (admin/)
    # that import the router's modules, which must load without the app loading first.
    if name == "RouterApp":
        from slm_server.router.app import RouterApp

        return RouterApp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
