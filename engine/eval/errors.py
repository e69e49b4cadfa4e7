"""The error type for what a user asked the evaluation to read: the export file, benchmark names, shard folders."""


class EvalInputError(ValueError):
    """One line naming the file, folder or flag at fault and the fix. The CLIs print it and exit 2 before
    any work; a ValueError, so code that caught the ValueErrors raised for these before still does."""
