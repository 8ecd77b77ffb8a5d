"""Images and audio through the router, with the official openai SDK, to a fake backend.

The real servers for these model types (mlx-openai-server's image and whisper handlers)
need models from the Hugging Face hub, which these machines cannot reach; the fake backend
reports what it received (model, prompt, the file's sha256), so the tests prove the router
routes by the form's ``model`` and forwards uploads byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from config_builder import entry
from fake_backend_proc import FakeBackend
from router_proc import RouterProcess

# Binary content with CRLFs and a would-be boundary inside, as real files have.
AUDIO = b"RIFF\x00\x01\r\n--not-the-boundary\r\n\r\n" + os.urandom(300_000)
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(50_000)


def _mlx(model_id: str, port: int, model_type: str) -> dict[str, Any]:
    return entry(model_id, port, backend="mlx", model_type=model_type, model_path=f"hub/{model_id}")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


@pytest.fixture(scope="module")
def router(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config = {
        "models": {
            "draw": _mlx("flux", fake.port, "image-generation"),
            "edit": _mlx("kontext", fake.port, "image-edit"),
            "listen": _mlx("whisper", fake.port, "whisper"),
            "chat": entry("m-chat", fake.port),
        }
    }
    process = RouterProcess(config, Path(tmp_path_factory.mktemp("media")))
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def sdk(router: RouterProcess) -> Iterator[openai.OpenAI]:
    with router.openai() as client:
        yield client


def test_image_generation(sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(model="flux", prompt="a red cat", response_format="b64_json")
    assert result.data is not None
    assert base64.b64decode(result.data[0].b64_json or "") == b"flux: a red cat"


def test_image_edit_forwards_the_upload_intact(sdk: openai.OpenAI) -> None:
    result = sdk.images.edit(
        model="kontext", image=("cat.png", PNG, "image/png"), prompt="add a hat"
    )
    assert result.data is not None
    picture = base64.b64decode(result.data[0].b64_json or "").decode()
    assert picture == f"kontext: add a hat: {hashlib.sha256(PNG).hexdigest()}"


def test_transcription_forwards_the_upload_intact(sdk: openai.OpenAI) -> None:
    result = sdk.audio.transcriptions.create(
        model="whisper", file=("speech.wav", AUDIO, "audio/wav"), language="en"
    )
    digest = hashlib.sha256(AUDIO).hexdigest()
    assert result.text == f"whisper heard {len(AUDIO)} bytes, sha256 {digest}"


def test_upload_to_a_model_of_another_type_is_refused(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.audio.transcriptions.create(model="m-chat", file=("a.wav", AUDIO, "audio/wav"))
    assert refused.value.code == "model_type_mismatch"
    assert "whisper" in refused.value.message


def _post_form(router: RouterProcess, content: bytes, content_type: str) -> httpx.Response:
    url = f"{router.url}/v1/audio/transcriptions"
    return httpx.post(url, content=content, headers={"content-type": content_type})


def test_form_without_model_gets_the_error_envelope(router: RouterProcess) -> None:
    response = httpx.post(
        f"{router.url}/v1/audio/transcriptions", files={"file": ("a.wav", AUDIO, "audio/wav")}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "model" and error["type"] == "invalid_request_error"


MODEL_PART = b"--b\r\nContent-Disposition: form-data; name=model\r\n\r\nwhis"
WITH_BOUNDARY = "multipart/form-data; boundary=b"


@pytest.mark.parametrize(
    ("content", "content_type", "complaint"),
    [
        (MODEL_PART + b"per\r\n--b--", "multipart/form-data", "boundary"),
        (b"model=whisper", WITH_BOUNDARY, "none of its boundary"),
        (MODEL_PART, WITH_BOUNDARY, "ends inside"),  # cut off
    ],
)
def test_malformed_forms_get_400(
    router: RouterProcess, content: bytes, content_type: str, complaint: str
) -> None:
    response = _post_form(router, content, content_type)
    assert response.status_code == 400
    assert complaint in response.json()["error"]["message"]


def test_hand_made_form_is_routed_by_its_model_field(router: RouterProcess) -> None:
    form = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="model.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + AUDIO + b"\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="model"\r\n\r\n'
        b"whisper\r\n"
        b"--XyZ--\r\n"
    )
    response = _post_form(router, form, "multipart/form-data; boundary=XyZ")
    assert response.status_code == 200, response.text
    assert response.json()["text"].startswith(f"whisper heard {len(AUDIO)} bytes")


def test_form_on_an_endpoint_that_takes_json_gets_400(router: RouterProcess) -> None:
    form = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nm-chat\r\n--b--\r\n'
    response = httpx.post(
        f"{router.url}/v1/chat/completions",
        content=form,
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 400
    assert "takes a JSON body" in response.json()["error"]["message"]
