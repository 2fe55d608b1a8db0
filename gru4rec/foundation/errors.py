"""The failures this project reports to people rather than as bugs, one type per kind.

Every kind carries the exit code the command line ends with and the HTTP status the service answers
with, so both map errors the same way everywhere: `gru4rec.cli.main` turns any GRU4RecError into its
message on one line and `exit_code`; the service's single handler turns it into `http_status` and
`detail()`. Anything else that escapes is a bug in this library and keeps its traceback (exit 1, or
a logged 500).
"""

from __future__ import annotations

from typing import Any


class GRU4RecError(Exception):
    """Base of the reported failures; subclasses set exit_code and http_status."""

    exit_code: int = 2
    http_status: int = 400

    def detail(self) -> Any:
        """The JSON `detail` of an HTTP answer."""
        return str(self)


class UserError(GRU4RecError):
    """Bad input: the message names the file, row, field or parameter and what is wrong.

    Also an unusable result the user has to act on (every event filtered out, training diverged).
    """

    exit_code = 2
    http_status = 400


class ModelUnavailable(UserError):
    """A model directory that cannot be loaded (missing, damaged, or of another format).

    The command line exits 2; the service keeps serving the model it has and answers 409 to a reload.
    """

    http_status = 409
