import pytest

from config_builder import entry, make_config
from slm_server.router.errors import AmbiguousModel, ModelNotFound, WrongModelType
from slm_server.router.routing import RoutingTable


def table() -> RoutingTable:
    return RoutingTable(
        make_config(
            {
                "chat": entry("m-chat", 9001),
                "embed": entry("m-embed", 9002, model_type="embeddings"),
                "rank": entry("m-rank", 9003, model_type="rerank"),
                "off": entry("m-off", 9004, enabled=False),
                "twin_a": entry("m-twin", 9005),
                "twin_b": entry("m-twin", 9006),
                "twin_off": entry("m-chat", 9007, enabled=False),
            }
        )
    )


def test_lookup_finds_the_entry_by_model_id() -> None:
    backend = table().lookup("m-chat", "/v1/chat/completions")
    assert backend.role == "chat"
    assert backend.entry.port == 9001


def test_disabled_duplicate_does_not_make_an_id_ambiguous() -> None:
    assert table().lookup("m-chat", "/v1/completions").role == "chat"


def test_unknown_model_lists_the_enabled_ids() -> None:
    with pytest.raises(ModelNotFound) as raised:
        table().lookup("nope", "/v1/chat/completions")
    assert raised.value.status == 404
    assert "m-chat, m-embed, m-rank, m-twin" in raised.value.message
    assert "m-off" not in raised.value.message


def test_disabled_model_is_not_routed() -> None:
    with pytest.raises(ModelNotFound):
        table().lookup("m-off", "/v1/chat/completions")


def test_id_in_two_enabled_entries_is_a_conflict() -> None:
    with pytest.raises(AmbiguousModel) as raised:
        table().lookup("m-twin", "/v1/chat/completions")
    assert raised.value.status == 409
    assert "twin_a" in raised.value.message and "twin_b" in raised.value.message


@pytest.mark.parametrize(
    ("model", "endpoint"),
    [
        ("m-chat", "/v1/embeddings"),
        ("m-chat", "/v1/rerank"),
        ("m-embed", "/v1/chat/completions"),
        ("m-rank", "/v1/embeddings"),
        ("m-embed", "/rerank"),
    ],
)
def test_endpoint_must_fit_the_model_type(model: str, endpoint: str) -> None:
    with pytest.raises(WrongModelType) as raised:
        table().lookup(model, endpoint)
    assert raised.value.status == 400


@pytest.mark.parametrize("endpoint", ["/v1/rerank", "/rerank", "/v1/reranking"])
def test_all_rerank_spellings_reach_a_rerank_model(endpoint: str) -> None:
    assert table().lookup("m-rank", endpoint).role == "rank"
