"""The router's own HTTP/1.1 server protocol, run by uvicorn in place of its own."""

from slm_server.router.http1.protocol import MAX_HEAD_BYTES, Http1Protocol

__all__ = ["MAX_HEAD_BYTES", "Http1Protocol"]
