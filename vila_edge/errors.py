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


class MissingExtraError(VilaEdgeError):
    """A command needs packages that the core install leaves out; the message names the extra that brings them."""


# The packages a job needs beyond the core install, by the extra that brings them (setup.py's extras_require).
EXTRA_MODULES = {"quantize": ("torch", "transformers"), "serve": ("fastapi", "uvicorn", "prometheus_client")}


def require_extra(extra: str, job: str, instead: str = "") -> None:
    """Refuses `job` in one line naming `pip install 'vila-edge[EXTRA]'` (or what to do `instead`) when a package
    of that extra is missing."""
    import importlib.util

    for module in EXTRA_MODULES[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: sys.modules holds None for it, an import blocked
            found = False
        if not found:
            fix = f"pip install 'vila-edge[{extra}]'" + (f", or {instead}" if instead else "")
            raise MissingExtraError(f"{job} needs {module}, which is not installed; {fix}")
