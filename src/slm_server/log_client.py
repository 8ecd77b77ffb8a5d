"""``slm-server logs ROLE [-f] [-n N]``: a log of the running instance, printed as it comes.

The standard library's client, like ``ps``: the instance is asked directly (never through
a proxy from the environment), connecting within a bound; a followed log then waits for
new lines as long as it takes, since a quiet model may say nothing for hours.
"""

from __future__ import annotations

import http.client
import sys
import urllib.parse

from slm_server.control import KEY_HINT, error_message

CONNECT_TIMEOUT_S = 10.0
_MAX_LINE_BYTES = 64 * 1024  # a log line is at most 8 KB; this only bounds a stray one
_MAX_ERROR_BYTES = 64 * 1024


def run_logs(url: str, name: str, *, follow: bool, lines: int, api_key: str | None) -> int:
    """Print the last ``lines`` lines of ``name``'s log (a role, or ``router``), then with
    ``follow`` each new one until interrupted or the instance stops."""
    parts = urllib.parse.urlsplit(url)
    connection_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    host = parts.hostname or "127.0.0.1"
    connection = connection_type(host, parts.port, timeout=CONNECT_TIMEOUT_S)
    query = urllib.parse.urlencode({"tail": lines, **({"follow": 1} if follow else {})})
    path = f"{parts.path.rstrip('/')}/admin/logs/{urllib.parse.quote(name, safe='')}?{query}"
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            message = error_message(response.status, response.read(_MAX_ERROR_BYTES))
            print(f"{message}; {KEY_HINT}" if response.status == 401 else message, file=sys.stderr)
            return 1
        if follow and connection.sock is not None:
            connection.sock.settimeout(None)
        while line := response.readline(_MAX_LINE_BYTES):
            sys.stdout.write(line.decode("utf-8", "replace"))
            if follow:
                sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except TimeoutError:
        print(f"no answer from {url} within {CONNECT_TIMEOUT_S:g} s", file=sys.stderr)
        return 1
    except (OSError, http.client.HTTPException):
        print(f"no slm_server answers at {url}, or it stopped answering", file=sys.stderr)
        return 1
    finally:
        connection.close()
    sys.stdout.flush()
    return 0
