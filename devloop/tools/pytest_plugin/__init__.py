"""A directory put on PYTHONPATH for the project's pytest: it holds one uniquely named plugin.

Nothing here may import devloop: it runs in the project's interpreter.
"""
