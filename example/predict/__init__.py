"""Predict with a logged or registered MLflow model: ``python -m predict MODEL_URI INPUT``."""
