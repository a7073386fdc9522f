"""Serving a compiled model: `ray_app` is a Ray Serve deployment (needs the `serve` extra).

Nothing in resnetc imports this package, so Ray stays optional: import `resnetc.serving.ray_app` to serve.
"""
