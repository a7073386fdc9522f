"""The block library that ships with resnetc: `blocks.yaml`, usable by name from any spec."""
