"""The OpenAPI document stays true to the payload and reply classes (against the router and a
live backend: service/test_openapi.py)."""

from __future__ import annotations

import attrs

from deepmemory_service.api import payloads, replies
from deepmemory_service.api.openapi import document, schema_of
from deepmemory_service.api.routes import ENDPOINTS
from deepmemory_service.models import Run
from deepmemory_service.platform.config import load_settings
from deepmemory_service.runs.settings import DeepMemorySettings

# the bounds the document is made with: 10 questions per chunk, 1,000 documents an upload
SETTINGS_10_1000 = load_settings(
    {
        "DEEPMEMORY_GENERATION_MAX_QUESTIONS_PER_CHUNK": "10",
        "DEEPMEMORY_UPLOADS_MAX_DOCUMENTS": "1000",
    }
)


def test_request_bodies_are_the_payload_classes() -> None:
    doc = document(ENDPOINTS, SETTINGS_10_1000)
    generate = doc["paths"]["/deep-memory/generate"]["post"]["requestBody"]
    schema = generate["content"]["application/json"]["schema"]
    assert schema["required"] == ["user_id"]
    assert set(schema["properties"]) == {
        "user_id",
        "questions_per_chunk",
        "auto_train",
        "regenerate",
    }
    assert schema["properties"]["questions_per_chunk"]["maximum"] == 10
    assert schema["additionalProperties"] is False
    docs = schema_of(payloads.DocumentsIn)
    assert docs["properties"]["documents"]["items"]["required"] == ["text"]
    upload = doc["paths"]["/documents"]["post"]["requestBody"]["content"]["application/json"]
    documents = upload["schema"]["properties"]["documents"]
    # the service refuses an empty list and more than the configured documents per upload
    assert (documents["minItems"], documents["maxItems"]) == (1, 1000)
    assert schema_of(payloads.ProceedIn)["required"] == ["training_run_id", "user_id"]


def test_reply_schemas_are_the_classes_the_views_use() -> None:
    doc = document(ENDPOINTS, SETTINGS_10_1000)
    schemas = doc["components"]["schemas"]
    run = schemas["Run"]
    shown = {f.name for f in attrs.fields(Run)} - replies.RUN_HIDDEN | set(replies.RUN_EXTRA)
    assert set(run["properties"]) == set(run["required"]) == shown
    settings = schemas["Settings"]
    assert set(settings["properties"]) == {f.name for f in attrs.fields(DeepMemorySettings)}
    for name, schema in schemas.items():
        assert schema["additionalProperties"] is False, name
    text = schema_of(payloads.DocumentIn)["properties"]["text"]
    assert text["pattern"] == payloads.NOT_BLANK
    generate = doc["paths"]["/deep-memory/generate"]["post"]["responses"]
    assert {"202", "400", "409", "413", "415", "422", "401", "503"} <= set(generate)
    # a file's bytes: no JSON schema, the file's own statuses
    upload = doc["paths"]["/documents/file"]["post"]
    assert upload["requestBody"]["content"] == {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
    }
    assert {"201", "400", "413", "415", "422", "429", "401", "503"} <= set(upload["responses"])
