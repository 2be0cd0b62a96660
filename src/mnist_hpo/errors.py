"""The one user-facing error type: a sentence that says what went wrong and what to do."""


class HpoError(Exception):
    """A problem the user can fix. The message is shown as is, without a traceback.

    exit_code follows the usual convention: 2 for bad input (usage), 1 for runtime trouble
    (storage unreachable, data missing, a study that does not exist yet).
    """

    exit_code = 1


class UsageError(HpoError):
    """Bad input on the command line or in a study spec."""

    exit_code = 2
