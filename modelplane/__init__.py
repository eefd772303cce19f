"""modelplane: a control plane for machine-learning models, speaking the Seldon Core v2 scheduler API.

This package is the shared base every modelplane process stands on: addresses, transport security, auth,
logging, configuration, sizes, and ``spec`` (the knowledge of the Scheduler API the processes share). The
processes live in the top-level packages ``scheduler``, ``agent``, ``gateway``, ``trainer`` (and ``servers``,
the inference-server adapters); ``modelplane.cli`` is the command line that wires them, and nothing imports it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelplane")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
