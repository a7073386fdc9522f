"""Training the generated modules (`resnetc train`) and probing them at initialisation (`resnetc probe`)."""
