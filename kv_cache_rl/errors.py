"""The errors a user can fix: a bad argument, name, option or file. The command line reports
these in one line; anything else (a broken invariant, a bug) keeps its traceback.

Each also derives from the built-in type a caller would expect (``ValueError`` for a bad value,
``FileNotFoundError`` for a missing file), so ``except ValueError`` keeps working."""


class KVCacheRLError(Exception):
    """Base of the project's user-facing errors."""


class ConfigError(KVCacheRLError, ValueError):
    """A bad argument or configuration value: an unknown name, a value out of range."""


class MissingFileError(KVCacheRLError, FileNotFoundError):
    """A file the user named (a trace, a weights file) does not exist or is not a file."""
