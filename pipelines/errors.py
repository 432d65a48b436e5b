"""The one exception type the CLI prints as a plain message (no traceback): it says what to do."""


class StudyError(RuntimeError):
    pass
