"""The one error type that stops a build before any work: a problem with the layout or the arguments."""


class LayoutError(Exception):
    """A structural problem (missing root or split file, unknown label, conflicting OUT).

    The message is one line that names the file and says what is expected; the CLI prints it and
    exits with code 2 before anything is written.
    """
