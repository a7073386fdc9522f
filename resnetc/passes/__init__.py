"""IR -> IR rewrites, one verb-named module each."""
