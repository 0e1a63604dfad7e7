"""One exception type for problems the user can fix (bad data, bad config).

Entry points print its message without a traceback; everything else is a bug and keeps its traceback.
"""


from pathlib import Path


class UserError(Exception):
    """A problem with the user's input: the message names the file/row/option and the fix."""


def load_checkpoint(module_class, path: str | Path, missing_hint: str):
    """`module_class.load_from_checkpoint` on CPU with errors that say what is wrong with the file."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist. {missing_hint}")
    try:
        return module_class.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    except (KeyError, TypeError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(f"{path} is not a covidseg {module_class.__name__} checkpoint ({type(err).__name__}: "
                        f"{str(err)[:200]}). {missing_hint}") from err
