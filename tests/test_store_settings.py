"""The shared Responses store's settings: the URL, its password, check-config, start-up.

No Redis is needed here: nothing connects until a request needs the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config_builder import entry, make_config
from net import free_port
from slm_server.config import ConfigError, load_config
from slm_server.config.store_url import parse_store_url
from slm_server.stores import StoreSettingError, make_store
from slm_server.stores.memory import MemoryStore
from slm_server.stores.redis_store import RedisStore, entry_key
from slm_server.stores.rules import store_problems

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://cache.internal", "redis://cache.internal:6379/0"),
        ("redis://127.0.0.1:7000/3", "redis://127.0.0.1:7000/3"),
        (f"rediss://app:{SECRET}@cache.example.com:6380/1", "rediss://cache.example.com:6380/1"),
        (f"redis://:{SECRET}@[::1]:6379", "redis://[::1]:6379/0"),
        ("REDIS://host/", "redis://host:6379/0"),
    ],
)
def test_a_store_url_is_shown_without_its_user_or_password(url: str, shown: str) -> None:
    assert parse_store_url(url).shown == shown


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"http://:{SECRET}@host:6379", "must start with redis:// or rediss://"),
        (f"redis://:{SECRET}@:6379/0", "names no host"),
        (f"redis://:{SECRET}@host:99999", "is not a URL"),
        (f"redis://:{SECRET}@host:0", "port 0"),
        (f"redis://:{SECRET}@host/cache", "must end with a database number"),
        (f"redis://:{SECRET}@host/0?ssl=1", "takes no options"),
    ],
)
def test_a_bad_store_url_is_refused_without_quoting_it(tmp_path: Path, url: str, says: str) -> None:
    path = tmp_path / "models.yaml"
    config = {"models": {"chat": entry("m", 8001)}, "router": {"response_store_url": url}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.field == "router.response_store_url"
    assert says in problem.message
    assert SECRET not in str(problem)


@pytest.mark.parametrize(
    ("router", "says"),
    [
        (
            {"response_store_url": f"redis://:{SECRET}@h", "response_store_password_env": "P"},
            "the Redis password is given twice",
        ),
        ({"response_store_password_env": "P"}, "applies with response_store_url only"),
        (
            {"response_store_url": "redis://h", "response_store_password_env": SECRET + "!"},
            "must be the name of an environment variable",
        ),
        ({"response_store_url": "redis://h", "response_store_ttl_s": 0}, "greater than 0"),
    ],
)
def test_store_settings_that_cannot_work_are_refused(
    tmp_path: Path, router: dict[str, Any], says: str
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"chat": entry("m", 8001)}, "router": router}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert says in str(info.value)
    assert SECRET not in str(info.value)


def test_the_default_store_is_the_routers_memory() -> None:
    store = make_store(make_config({}).file.router, {})
    assert isinstance(store, MemoryStore)
    assert store.store.max_bytes == 256 * 1024 * 1024


def test_a_store_url_makes_a_redis_store_that_names_where_without_the_password() -> None:
    settings = make_config(
        {},
        response_store_url="redis://app@127.0.0.1:7000/2",
        response_store_password_env="SLM_TEST_REDIS_PASSWORD",
        response_store_ttl_s=600,
    ).file.router
    store = make_store(settings, {"SLM_TEST_REDIS_PASSWORD": SECRET})
    assert isinstance(store, RedisStore)
    assert store.forgets == (
        "responses are kept in Redis at redis://127.0.0.1:7000/2 for 600 s "
        "(router.response_store_ttl_s)"
    )
    assert store.client.connection_pool.connection_kwargs["password"] == SECRET
    with pytest.raises(StoreSettingError, match="named by response_store_password_env is not"):
        make_store(settings, {})


def test_owners_never_share_a_key() -> None:
    # A name holding ':' must not reach into another owner's keys.
    assert entry_key("resp_1", None) == "slm:resp::resp_1"
    assert entry_key("resp_1", "alice") == "slm:resp:alice:resp_1"
    assert entry_key("b:resp_1", "a") != entry_key("resp_1", "a:b")


def test_check_config_names_an_unset_password_variable_and_a_written_password() -> None:
    unset = make_config(
        {"chat": entry("m", 8001)},
        response_store_url="redis://h",
        response_store_password_env="SLM_TEST_REDIS_PASSWORD",
    )
    [problem] = store_problems(unset, {})
    assert problem.severity == "error"
    assert problem.field == "router.response_store_password_env"
    assert store_problems(unset, {"SLM_TEST_REDIS_PASSWORD": SECRET}) == []

    written = make_config({"chat": entry("m", 8001)}, response_store_url=f"redis://:{SECRET}@h")
    [problem] = store_problems(written, {})
    assert problem.severity == "warning" and "prefer response_store_password_env" in str(problem)
    assert SECRET not in str(problem)

    stray = make_config({"chat": entry("m", 8001)}, response_store_ttl_s=60)
    [problem] = store_problems(stray, {})
    assert problem.severity == "warning" and "applies with response_store_url only" in str(problem)
    assert store_problems(make_config({"chat": entry("m", 8001)}), {}) == []


def slm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SLM_TEST_REDIS_PASSWORD"}
    return subprocess.run(
        [sys.executable, "-m", "slm_server", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_and_the_router_refuse_an_unset_password_variable(tmp_path: Path) -> None:
    router = {
        "response_store_url": "redis://127.0.0.1:6379/0",
        "response_store_password_env": "SLM_TEST_REDIS_PASSWORD",
    }
    config = {"models": {"chat": entry("m", free_port())}, "router": router}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(config))
    checked = slm(tmp_path, "check-config", "--config", "models.yaml")
    assert checked.returncode == 1
    assert (
        "error: models.yaml: field 'router.response_store_password_env': "
        "the environment variable named by response_store_password_env is not set"
    ) in checked.stdout
    assert "SLM_TEST_REDIS_PASSWORD" not in checked.stdout  # it could be the password itself
    args = ["--config", "models.yaml", "--host", "127.0.0.1", "--port", str(free_port())]
    started = slm(tmp_path, "router", *args)
    assert started.returncode == 1
    assert "the Responses store cannot be used; nothing started" in started.stderr


def test_the_redis_password_variable_is_kept_from_the_backends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from slm_server import backends
    from slm_server.serving import make_supervisor

    # The launch spec is made without a model file on disk: only its environment matters.
    monkeypatch.setattr(backends, "launch_spec", lambda entry, base_dir: backends.LaunchSpec([]))
    config = make_config(
        {"chat": entry("m", 8001)},
        response_store_url="redis://h",
        response_store_password_env="SLM_TEST_REDIS_PASSWORD",
    )
    process = make_supervisor(config).processes["chat"]
    spec = process._launch()
    environment = spec.environment({"SLM_TEST_REDIS_PASSWORD": SECRET, "HOME": "/home/u"})
    assert "SLM_TEST_REDIS_PASSWORD" not in environment and environment["HOME"] == "/home/u"
