"""The project's own error, at the bottom of the package: every layer raises it."""


class HiresmedError(ValueError):
    """One clear sentence naming the parameter or file at fault, raised before expensive work."""
