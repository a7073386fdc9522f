"""The bottom layer: errors with source positions, the integer expression language, symbolic sizes,
the IR's types and all-or-nothing file writing. It imports only the standard library and numpy."""
