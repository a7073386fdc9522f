"""The PyTorch backend: the IR rendered as readable Python source through templates/, with the alias analysis
that decides where an op may run in place (only PyTorch needs it)."""
