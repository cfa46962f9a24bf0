"""A shim of the reference's ``wse_server`` package on wsed: applications that import
``wse_server._wse_accel`` run on wsed when this directory is on PYTHONPATH (or installed)."""

from wse_server._wse_accel import *  # noqa: F401,F403
from wse_server._wse_accel import __all__  # noqa: F401
