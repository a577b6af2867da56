"""Helpers every project and tool of this repository shares; torch-free.

- ``project_tools.cli``: the argument parser whose errors are one line (exit 2) and the value
  types that check each parameter once, before any slow import.
- ``project_tools.registry``: register a logged model as a ``candidate`` version tagged with
  its metrics and the metric that ranks it (``make promote`` reads that tag).

Projects reach this package the way they reach ``data_loader``: a relative link in the project
folder (``projects/X/project_tools -> ../../example/project_tools``).
"""
