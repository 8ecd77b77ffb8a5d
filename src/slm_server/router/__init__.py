"""The routing service: one OpenAI-compatible endpoint in front of the backends."""

from slm_server.router.app import RouterApp

__all__ = ["RouterApp"]
