#!/usr/bin/env bash
# Starts the backends and the router in the background and reports each model
# as it becomes ready. Arguments go to `slm-server start` (--config, --port, ...).
# Stop with ./stop.sh.
set -euo pipefail
cd "$(dirname "$0")"
scripts/sync --quiet
exec scripts/uv run --frozen --no-sync slm-server start "$@"
