"""The one exception type users see.

Every problem caused by input (a bad model file, a wrong shape, an infeasible budget) is raised as
`EdgepruneError` with a message that names the problem and the fix in one line. The CLI prints
that line and exits with status 2; anything else is a bug and is reported as such.
"""


class EdgepruneError(Exception):
    """A user-facing error: `str(err)` is a single line saying what went wrong and what to do."""


def first_line(exc: BaseException | str, limit: int = 200) -> str:
    """The first non-empty line of an exception's (or a tool's error) text, shortened: third-party errors (torch,
    onnxruntime) span many lines, and an `EdgepruneError` message must stay on one."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
