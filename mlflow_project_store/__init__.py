"""The MLflow Project Store's own tooling; ``make setup`` installs it (README.md: what is where).

- ``layout``: every path and convention of the repository, defined once;
- ``new_project``, ``validate``, ``export``: make new-project, make validate, make export;
- ``backends``, ``images``: the ``store-docker`` and ``store-kubernetes`` backends of mlflow run;
- ``data_loader``, ``project_tools``, ``predict`` (from ``example/``) and ``ready_for_mlflow``:
  the folders of those names, mapped into this package by ``pyproject.toml``.
"""
