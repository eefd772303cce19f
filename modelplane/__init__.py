"""modelplane: a control plane for machine-learning models, speaking the Seldon Core v2 scheduler API.

This package holds what every modelplane process shares: the command line, version, addresses,
transport security and logging. The processes themselves live in the top-level packages
`scheduler`, `agent`, `servers` (and later `gateway`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelplane")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
