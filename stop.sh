#!/usr/bin/env bash
# Stops what ./start.sh started, backends included. Arguments go to `slm-server stop`.
set -euo pipefail
cd "$(dirname "$0")"
exec scripts/uv run --frozen --no-sync slm-server stop "$@"
