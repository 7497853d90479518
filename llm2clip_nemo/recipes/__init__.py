"""One entry point per CLI verb; each assembles config, runtime, data and model."""
