"""The project's code. Other variants of the project reach it through a relative link."""
