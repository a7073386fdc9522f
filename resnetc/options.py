"""The pipeline's options as data (placeholder while the options object is built)."""
