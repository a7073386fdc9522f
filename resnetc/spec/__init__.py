"""Reading specs: YAML with source positions, validated by pydantic models.

`load_spec` and `load_spec_text` are in `resnetc.spec.load`; this package imports nothing eagerly, because
the op registry (`resnetc.ops`) builds on `resnetc.spec.fields` and the spec models build on the registry.
"""
