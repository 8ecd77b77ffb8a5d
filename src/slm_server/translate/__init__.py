"""Protocol translation: Responses API and Anthropic Messages <-> Chat Completions.

Pure functions on decoded JSON (dicts), and streaming converters fed one
upstream event at a time. Nothing here does I/O or imports an HTTP library.
"""
