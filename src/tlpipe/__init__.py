"""tlpipe: a reproducible transfer-learning pipeline (DVC stages over one small library)."""

__version__ = "0.1.0"
