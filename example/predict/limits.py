"""Size limits on what predict and serve read, each a whole number of MiB that an environment
variable can raise for input that is trusted (like the data loader's ``DATA_LOADER_MAX_IDX_MB``).

- ``PREDICT_MAX_CSV_ROW_MB`` (default 1): the longest CSV row ``predict`` reads. A row is held
  whole while it is parsed, so a file of one 200 MB line would need 200 MB and more.
- ``PREDICT_SERVE_MAX_BODY_MB`` (default 100, what MLflow's own serving container lets through
  to ``/invocations``): the largest request body ``predict.serve`` accepts.
"""

from __future__ import annotations

from mlflow_project_store.data_loader.idx import MIB, mib_limit

CSV_ROW_ENV = "PREDICT_MAX_CSV_ROW_MB"
DEFAULT_CSV_ROW_MB = 1
BODY_ENV = "PREDICT_SERVE_MAX_BODY_MB"
DEFAULT_BODY_MB = 100
# The limit in bytes from a variable, else its default; ValueError for a value that is not a
# whole number of MiB >= 1 (the data loader's rule for DATA_LOADER_MAX_IDX_MB).
limit_bytes = mib_limit


def describe(limit: int, variable: str) -> str:
    """``the limit of 1,048,576 bytes (1 MiB); raise it with VARIABLE=<MiB>``."""
    return f"the limit of {limit:,} bytes ({limit / MIB:g} MiB); raise it with {variable}=<MiB>"
