"""The few exception types siamrdm raises. All are bad input in a broad sense: the CLI turns each into one line
on stderr and exit code 2. Library messages name files and settings, never command-line flags; cli.py maps a
ConfigError's setting to its flag."""

from __future__ import annotations


def printable(text: object) -> str:
    """`text` as one safe line for a terminal: every character str.isprintable refuses (line breaks, U+2028,
    tabs, terminal escape sequences such as ESC, other control and format characters) written as Python's repr
    writes it (\\n, \\x1b, \\u2028). File names, keys and paths come from files and users: raw, a newline would split
    a one-line error in two and an escape sequence would drive the terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class DataError(ValueError):
    """Bad input. The message is one line naming the file and the problem."""


class UsageError(DataError):
    """A usage problem found after parsing (options that conflict, or name what a file does not hold): its message
    names the command-line options; exits 2 like bad input."""


class ConfigError(DataError):
    """A training setting that cannot work; `option` names the TrainConfig field (or the function argument)."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option}: {problem}")
        self.option, self.problem = option, problem

    def __reduce__(self):  # pickled by its fields, so that it crosses from a worker process (challenge --jobs)
        return ConfigError, (self.option, self.problem)


class WeightsError(ConfigError):
    """Pretrained weights could not be had (the `weights` setting); the message says which ways there are."""

    def __init__(self, problem: str):
        super().__init__("weights", problem)

    def __reduce__(self):
        return WeightsError, (self.problem,)


class TrainingDiverged(ConfigError):
    """The loss or the weights became NaN or infinite; the run stops (a new run's folder is left as it was found,
    a resumed run's last checkpoint stays as it was). A setting of the run made it diverge, so the error names the
    one to change (the learning rate, by default): the command line shows its flag."""

    def __init__(self, problem: str, option: str = "lr"):
        super().__init__(option, problem)

    def __reduce__(self):
        return TrainingDiverged, (self.problem, self.option)
