"""The JSON Schema of the spec format, from the pydantic models, for editors (yaml-language-server).

Each op's layer schema carries the op's one-line doc from the registry, so editors show it on hover.
"""

from __future__ import annotations

import json

from resnetc import ops
from resnetc.frontend.models import Spec


def spec_schema() -> dict[str, object]:
    schema = Spec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "resnetc spec"
    definitions: dict[str, dict[str, object]] = schema["$defs"]  # type: ignore[assignment]
    for op in ops.spec_ops():
        assert op.fields is not None
        definitions[op.fields.__name__]["description"] = f"`{op.name}`: {op.doc}"
    return schema


def spec_schema_text() -> str:
    return json.dumps(spec_schema(), indent=2, sort_keys=True) + "\n"
