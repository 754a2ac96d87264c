"""Errors a user can cause. The CLI prints them without a traceback and exits non-zero."""


class VilaEdgeError(Exception):
    """Base class: the message names the file at fault and the fix."""

    exit_code = 1


class CheckpointError(VilaEdgeError):
    """A checkpoint folder is missing a part, or a part does not fit the others."""


class MediaError(VilaEdgeError):
    """An image or video cannot be read."""


class UnsupportedError(VilaEdgeError):
    """A valid input that this version of vila_edge does not handle yet."""


class UsageError(VilaEdgeError):
    """Options that contradict each other or the checkpoint."""

    exit_code = 2


class QuantizeError(VilaEdgeError):
    """The AWQ search cannot go on (non-finite activations in the fp model)."""


class DoesNotFitError(VilaEdgeError):
    """The memory plan says the engine would not fit the target."""
