"""The exceptions Touchstream raises, in one tree.

::

    TouchstreamError            anything Touchstream itself reports
    ├── UsageError              a command line, file or option a user got wrong
    │   └── ConfigError         a configuration or CSV mapping file that is wrong
    └── RunError                a run that started and could not complete

Bad input records are not exceptions: they end in the rejected log
(``operators.decode.Rejection``) and the run goes on.
"""

from __future__ import annotations


class TouchstreamError(Exception):
    """Base of every error Touchstream reports to a user."""


class UsageError(TouchstreamError):
    """A command line, input file or option that cannot be used as given."""


class ConfigError(UsageError):
    """A configuration file that is not valid; the message names the key."""


class RunError(TouchstreamError):
    """A run that started and could not complete (a worker failed)."""
