"""Training and evaluation stages, each a thin layer over the engine."""
