"""Lowering: a checked spec becomes the IR (block templates and the instantiated graph), then is verified."""
