"""The one exception type the data pipeline raises for user mistakes."""


class DataError(ValueError):
    """A problem with the user's data or data settings; the message is one line meant for the user."""
