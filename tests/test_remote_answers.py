"""What a server elsewhere's answer headers keep on their way to the client."""

from __future__ import annotations

from slm_server.router.remote_answers import from_remote


def test_the_servers_cookies_account_and_key_challenge_stay_there() -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"set-cookie", b"__cf_bm=x"),
        (b"openai-organization", b"org-upstream"),
        (b"openai-project", b"proj-upstream"),
        (b"openai-processing-ms", b"12"),
        (b"www-authenticate", b"Bearer"),
        (b"x-ratelimit-remaining-requests", b"99"),
    ]
    assert from_remote(headers) == [
        (b"content-type", b"application/json"),
        (b"x-ratelimit-remaining-requests", b"99"),
    ]
