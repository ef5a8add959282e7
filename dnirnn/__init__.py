"""dnirnn: LSTMs trained with truncated BPTT and Decoupled Neural Interfaces (synthetic
gradients). See README.md; the command line is ``dnirnn`` (or ``python -m dnirnn``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dnirnn")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
