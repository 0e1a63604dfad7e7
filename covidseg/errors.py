"""One exception type for problems the user can fix (bad data, bad config).

Entry points print its message without a traceback; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message names the file/row/option and the fix."""
