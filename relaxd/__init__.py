"""relaxd: the software of an emotion-aware children's relaxation chair."""

__version__ = "0.1.0"
