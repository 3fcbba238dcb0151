"""User-facing errors: one message that names the culprit and says what to do."""


class LogitscopeError(Exception):
    """A problem with what the user gave us (a path, a prompt, an option).

    The CLI prints ``str(err)`` alone (no traceback unless ``--debug``) and exits non-zero.
    """


class InputError(LogitscopeError):
    """Bad prompts, answers or options."""


class ModelLoadError(LogitscopeError):
    """A model that cannot be found, loaded or is not supported."""
