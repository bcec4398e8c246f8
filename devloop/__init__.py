"""DevLoop: run a project's checks the moment a file changes."""

__version__ = "0.1.0"  # the only copy: pyproject reads it (dynamic version)
