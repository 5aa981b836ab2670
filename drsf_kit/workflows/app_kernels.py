"""The app server's kernel manager: at most ``max_kernels`` live page kernels.

Every view of the page starts a kernel of about 850 MB; without a cap a few anonymous requests
exhaust the machine's memory. A request beyond the cap is answered 503 with one line, no traceback.
Idle kernels are culled by the base class (``cull_idle_timeout``, set by ``drsf_kit.workflows.app``). Voilà's
server process imports this module (``--VoilaConfiguration.multi_kernel_manager_class``).
"""

from __future__ import annotations

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets import Integer


class CappedKernelManager(AsyncMappingKernelManager):
    """``AsyncMappingKernelManager`` that refuses a new kernel once ``max_kernels`` are running."""

    max_kernels = Integer(4, config=True, help="live kernels at most; further page views get 503")

    async def start_kernel(self, *args, **kwargs):
        """Start a kernel unless the cap is reached (a restart of an existing kernel always goes)."""
        if kwargs.get("kernel_id") is None and len(self.list_kernel_ids()) >= self.max_kernels:
            self.log.warning("refusing a new kernel: %d are running (the cap)", self.max_kernels)
            raise web.HTTPError(503, f"the dashboard serves at most {self.max_kernels} pages at once; "
                                     "close one or try again later", reason="Too many open pages, try again later")
        return await super().start_kernel(*args, **kwargs)
