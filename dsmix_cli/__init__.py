"""dsmix: DSMix quality-aware pre-training and no-reference IQA, as a CLI and a Python package."""

__version__ = "0.1.0"
