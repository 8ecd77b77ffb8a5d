"""Operating a running server: config reload, log streaming, the dashboard."""
