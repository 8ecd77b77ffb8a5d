"""``slm-server logs ROLE [-f] [-n N]``: a log of the running instance, printed as it comes.

The standard library's client, like ``ps``: the instance is asked directly (never through
a proxy from the environment), connecting within a bound; a followed log then waits for
new lines as long as it takes, since a quiet model may say nothing for hours. On a
terminal, control characters are shown as U+FFFD (�) rather than acted on.
"""

from __future__ import annotations

import http.client
import sys
import urllib.parse

from slm_server.control import KEY_HINT, error_message

CONNECT_TIMEOUT_S = 10.0
_MAX_LINE_BYTES = 64 * 1024  # a log line is at most 8 KB; this only bounds a stray one
_MAX_ERROR_BYTES = 64 * 1024
# C0 and C1 control characters, DEL, but not the tab: on a terminal they could move the
# cursor, clear the screen, retitle the window, ... and a backend's log holds text its
# clients sent. Shown as the replacement character, as bytes that are not UTF-8 are.
_CONTROLS = {
    code: "\ufffd" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if code != ord("\t")
}


def printable(line: str) -> str:
    """``line`` (its line end kept) with every control character but the tab replaced."""
    body = line.removesuffix("\n")
    return body.translate(_CONTROLS) + line[len(body) :]


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
        on_terminal = sys.stdout.isatty()
        while line := response.readline(_MAX_LINE_BYTES):
            text = line.decode("utf-8", "replace")
            sys.stdout.write(printable(text) if on_terminal else text)
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
