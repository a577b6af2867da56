"""Test helpers, imported as ``tests.helpers.<module>``; conftest.py holds fixtures only."""
