"""The one exception type a user sees as a single clear line (the CLI prints it, no traceback)."""


class ConvslimError(Exception):
    """Bad input or an impossible request, phrased for the user: what is wrong and where."""
