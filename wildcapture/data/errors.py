"""The one exception type for user-facing data problems."""


class DatasetError(Exception):
    """A data problem the user can fix (missing folder, bad class name, corrupt image, bad config value).

    The message always names the thing to fix: a path, a config key (``data.<key>``) or a class.
    """
