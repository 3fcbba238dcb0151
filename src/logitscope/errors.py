"""User-facing errors: one message that names the culprit and says what to do.

Messages speak Python (``top_k=0: must be at least 1``); the command line names its own flags
instead (``--top-k 0: must be at least 1``) through :class:`ArgumentError`'s fields.
"""

from __future__ import annotations

from typing import Any


class LogitscopeError(Exception):
    """A problem with what the user gave us (a path, a prompt, an option).

    The CLI prints ``str(err)`` alone (no traceback unless ``--debug``) and exits with status 2.
    """


class InputError(LogitscopeError):
    """Bad prompts, answers or options."""


class ModelLoadError(LogitscopeError):
    """A model that cannot be found, loaded or is not supported."""


class PromptWarning(UserWarning):
    """A prompt habit that silently changes results (a double space, an answer without its leading
    space, ...). Issued through :mod:`warnings`, so it can be filtered:
    ``warnings.filterwarnings("ignore", category=logitscope.PromptWarning)``."""


class ArgumentError(InputError):
    """A bad value of one named argument: ``argument=value: problem[; pass argument=fix]``.

    ``argument``, ``value``, ``problem`` and ``fix`` are kept so that the command line can say the
    same with its flag (:meth:`for_flag`)."""

    def __init__(self, argument: str, value: Any, problem: str, *, fix: Any = None) -> None:
        self.argument, self.value, self.problem, self.fix = argument, value, problem, fix
        hint = f"; pass {argument}={fix!r}" if fix is not None else ""
        super().__init__(f"{argument}={value!r}: {problem}{hint}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (a rank sends its error to rank 0)
        return (_argument_error, (self.argument, self.value, self.problem, self.fix))

    def for_flag(self, flag: str, flag_of_fix: str | None = None) -> str:
        """The message with ``flag`` for the argument (``--top-k 0: must be at least 1``);
        ``flag_of_fix`` spells the fix (``--no-prepend-bos``), else ``flag`` and the fix's value."""
        shown = flag if isinstance(self.value, bool) else f"{flag} {self.value}"
        hint = ""
        if self.fix is not None:
            hint = f"; run with {flag_of_fix or f'{flag} {self.fix}'}"
        return f"{shown}: {self.problem}{hint}"


def _argument_error(argument: str, value: Any, problem: str, fix: Any) -> ArgumentError:
    return ArgumentError(argument, value, problem, fix=fix)
