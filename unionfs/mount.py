"""Composition root: build the filesystem, mount it with pyfuse3, serve until unmounted.

Imported only after the command line has been checked (and, in background mode, after
the fork), so a bad invocation answers fast and the daemon owns trio and FUSE alone.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
from collections.abc import Callable

import pyfuse3
import trio

from unionfs.blocking import Blocking
from unionfs.config import MountConfig
from unionfs.copyup import WorkDir
from unionfs.deferred import recover
from unionfs.filesystem import UnionFilesystem
from unionfs.fuse_adapter import FuseAdapter
from unionfs.stack import LayerStack
from unionfs.workdir_lock import hold

log = logging.getLogger(__name__)


def build_filesystem(config: MountConfig) -> UnionFilesystem:
    upper = bytes(config.upper) if config.writable and config.upper is not None else None
    work = None
    if upper is not None and config.work is not None:
        hold(config.work)  # kept for the life of the daemon
        work = WorkDir(bytes(config.work))
        if os.path.isdir(work.path):
            for line in recover(work.path, upper):
                log.warning("%s", line)
        work.prepare()
    stack = LayerStack([bytes(p) for p in config.lowers], upper, config.markers)
    return UnionFilesystem(
        stack,
        work,
        config.markers,
        Blocking(),
        sync=not config.volatile,
        lazy_copyup=config.lazy_copyup,
        writeback=config.writeback,
    )


def serve(config: MountConfig, ready: Callable[[], None]) -> None:
    """Mount, call ready() once the kernel accepted the mount, serve until unmounted."""
    os.umask(0)  # the kernel already applied the caller's umask to every mode we get
    # One descriptor per open file of every user of the mount: take all the kernel allows.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fs = build_filesystem(config)
    adapter = FuseAdapter(fs, config.timeout)
    pyfuse3.init(adapter, str(config.mountpoint), config.fuse_options())
    stopped_by_signal = False

    async def main() -> None:
        nonlocal stopped_by_signal
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                nonlocal stopped_by_signal
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sig:
                    async for _ in sig:
                        stopped_by_signal = True
                        pyfuse3.terminate()
                        return

            nursery.start_soon(watch_signals)
            fs.spawn = nursery.start_soon
            ready()
            await pyfuse3.main(min_tasks=4, max_tasks=64)
            await fs.settle()  # the upper dir is whole, plain overlayfs, at unmount
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=stopped_by_signal)
