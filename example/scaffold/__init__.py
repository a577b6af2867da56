"""The repository's project conventions, and the tools built on them.

- ``scaffold.layout``: the conventions (variants, environment files, links, image names).
- ``scaffold.new_project``: ``make new-project NAME=... VARIANTS=... TEMPLATE=...``.
- ``scaffold.validate``: ``make validate``, which checks every folder under ``projects/``.
"""
