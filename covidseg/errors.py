"""One exception type for problems the user can fix (bad data, bad config).

Entry points print its message without a traceback; everything else is a bug and keeps its traceback.
"""


from pathlib import Path


class UserError(Exception):
    """A problem with the user's input: the message names the file/row/option and the fix."""


def load_checkpoint(module_class, path: str | Path, missing_hint: str):
    """`module_class.load_from_checkpoint` on CPU, without running code from the file.

    Kept for existing callers; the loader lives in covidseg.checkpoints (imported here, not at the top,
    because that module imports this one).
    """
    from covidseg.checkpoints import load_module

    return load_module(module_class, path, missing_hint)
