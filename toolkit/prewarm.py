"""Loaded once by the worker fork server so that no run pays for it again.

Importing this module is the point: it pulls in what every kernel start needs (IPython, which
jupyter_client's kernelspec lookup imports, about a quarter of a second; the kernel provisioner
registry, read from entry points) before the fork server starts forking workers.
"""

from __future__ import annotations

import IPython  # noqa: F401  (imported for its side effect: the module cache)
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager  # noqa: F401
from jupyter_client.provisioning.factory import KernelProvisionerFactory

KernelProvisionerFactory.instance()
KernelSpecManager().find_kernel_specs()
