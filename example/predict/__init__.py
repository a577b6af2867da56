"""Predict with a logged or registered MLflow model: ``make predict``
(``python -m mlflow_project_store.predict MODEL_URI INPUT``)."""
