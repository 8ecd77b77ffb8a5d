"""The fake ``llama-server`` of the cold-start figure: ``python -m bench.cold_backend``.

It notes the time first of all, before importing anything it serves with: the moment
its code begins to run. What comes before (the interpreter starting) is measured apart,
by starting this same program directly; see ``bench.cold_start``.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()


def main() -> None:
    from bench.cold_start import serve_noting_times

    serve_noting_times(STARTED)


if __name__ == "__main__":
    main()
