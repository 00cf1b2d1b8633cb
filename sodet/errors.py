class SodetError(Exception):
    """One-line user-facing error: the CLI prints it without a traceback."""
