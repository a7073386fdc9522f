"""Bounds on what a spec may ask for, checked before the work they bound is done."""

MAX_REPEAT = 10_000  # blocks in one stage
MAX_PARAMETERS = 4_000_000_000  # checked before any weight exists
MAX_NODES = 200_000  # operations in the whole graph: bounds memory and time before anything is built
