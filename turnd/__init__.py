"""turnd: an anycast-style TURN/STUN relay server."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("turnd")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
