"""Weights: files (torch's zip and safetensors) read into named numpy arrays, matched to the IR, initialised."""
