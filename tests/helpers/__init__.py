"""Test helpers, imported as ``tests.helpers.<module>``; ``tests/conftest.py`` holds fixtures only."""
