"""API keys: which the router accepts, and what each may use."""

from slm_server.auth.ring import Grant, KeyRing, KeyRingError, key_digest, key_ring

__all__ = ["Grant", "KeyRing", "KeyRingError", "key_digest", "key_ring"]
