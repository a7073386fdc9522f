"""The front end: YAML with source positions → pydantic models (the layer union comes from the op registry)
→ a checked spec (every static check, located). `load_spec` is in `resnetc.frontend.load`, the checks in
`resnetc.frontend.check`; this package imports nothing eagerly."""
