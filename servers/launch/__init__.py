"""Start MLServer and Triton locally (for development, demos and tests): private venvs, free loopback
ports, readiness, and stopping by PID."""

from servers.launch.launchers import launch_mlserver, launch_triton
from servers.launch.local import LaunchError, LocalServer
from servers.launch.venvs import VenvError, server_venv

__all__ = ["LaunchError", "LocalServer", "VenvError", "launch_mlserver", "launch_triton", "server_venv"]
