"""A hyperparameter sweep whose trials are MLflow project runs nested under the sweep's run."""

BACKENDS = ("local", "kubernetes")
ENV_MANAGERS = ("local", "uv", "virtualenv", "conda")
