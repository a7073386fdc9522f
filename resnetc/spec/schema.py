"""The JSON Schema of the spec format, from the pydantic models, for editors (yaml-language-server)."""

from __future__ import annotations

import json

from resnetc.spec.models import Spec

SCHEMA_FILE = "spec.schema.json"  # in resnetc/library/, named by every shipped spec's modeline


def spec_schema() -> dict[str, object]:
    schema = Spec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "resnetc spec"
    return schema


def spec_schema_text() -> str:
    return json.dumps(spec_schema(), indent=2, sort_keys=True) + "\n"
