"""hexamesh: a peer-to-peer swarm that serves LLM inference with no central coordinator."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hexamesh")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
