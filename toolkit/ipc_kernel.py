"""Start ipykernel with every socket on IPC, including its pipe for forked subprocesses' output.

ipykernel binds the five kernel channels to whatever transport the connection file names, but
its IOPub thread always opens one extra ``tcp://127.0.0.1`` PULL socket so that processes forked
by the kernel can send their output home. nbcron's kernels must not listen on TCP at all, so this
launcher puts that pipe on a Unix socket beside the others (in the run's private directory) and
then starts the kernel exactly as ``python -m ipykernel_launcher`` would.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any


def _patch_iopub_pipe(folder: str) -> None:
    import zmq
    from ipykernel import iostream
    from zmq.eventloop.zmqstream import ZMQStream

    def setup_pipe_in(self: Any) -> None:
        ctx = self.socket.context
        self._pipe_uuid = os.urandom(16)  # as upstream: authenticates forked children
        pipe_in = ctx.socket(zmq.PULL)
        pipe_in.linger = 0
        self._pipe_address = f"ipc://{folder}/iopub-pipe-{os.getpid()}"
        pipe_in.bind(self._pipe_address)
        self._pipe_in = ZMQStream(pipe_in, self.io_loop)
        self._pipe_in.on_recv(self._handle_pipe_msg)

    def setup_pipe_out(self: Any) -> tuple[Any, Any]:
        ctx = zmq.Context()  # a new context after fork, as upstream
        pipe_out = ctx.socket(zmq.PUSH)
        pipe_out.linger = 3000
        pipe_out.connect(self._pipe_address)
        return ctx, pipe_out

    setattr(iostream.IOPubThread, "_setup_pipe_in", setup_pipe_in)  # noqa: B010
    setattr(iostream.IOPubThread, "_setup_pipe_out", setup_pipe_out)  # noqa: B010


def main() -> None:
    folder = os.environ.get("NBCRON_KERNEL_DIR") or tempfile.mkdtemp(prefix="nbcron-kernel-")
    _patch_iopub_pipe(folder)
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
