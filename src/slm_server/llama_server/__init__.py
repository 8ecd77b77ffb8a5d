"""llama-server built from pinned llama.cpp sources for this machine, and checked before use.

``recipe`` decides what to build (pure), ``source`` fetches the sources, ``build`` compiles
and installs into the cache, ``check`` proves a binary can load a model and generate on this
CPU, and ``locate`` picks the binary the llama.cpp backend runs.
"""
