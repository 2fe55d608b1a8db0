"""The one exception type for problems the user can fix (bad files, parameters or options).

The CLI turns it into a one-line message and a non-zero exit; the service turns it into a 4xx.
Anything else that escapes is a bug in this library and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the file, row, field or parameter and what is wrong."""
