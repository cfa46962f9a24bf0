"""``wse_server._wse_accel`` on wsed: re-exports wsed.compat (RustWSEServer and the helpers)."""

from wsed.compat import *  # noqa: F401,F403
from wsed.compat import __all__  # noqa: F401
