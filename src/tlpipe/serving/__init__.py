"""Serving: the MLflow pyfunc model, its registration, and control of a model-server process."""
