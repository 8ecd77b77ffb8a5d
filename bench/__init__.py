"""Side-by-side benchmark: a fake backend reached directly, through nginx, through slm_server.

Run ``bench/run`` (see bench/README.md).
"""
