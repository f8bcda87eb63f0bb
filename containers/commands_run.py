"""`lamina run`'s command: the image's defaults, the spec, and the start in the foreground
or detached. Apart from commands_runtime (the other lifecycle commands, ~500 lines) so
that a start does not import them (0.3-1 ms of every `lamina run` here).
"""

from __future__ import annotations

import os

from containers.cli import UserError

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    import argparse

    from containers.spec import ImageDefaults


def _image_defaults(root: str, ref: str) -> ImageDefaults:
    from containers.spec import ImageDefaults

    try:
        from containers.image_index import ImageIndex
        from containers.oci import ImageConfig
    except ImportError:
        raise UserError(f"unknown image {ref!r}: this build has no image store") from None
    index = ImageIndex(root)
    image = index.find_image(ref)
    config = ImageConfig.from_oci(index.oci_config(image.id))
    return ImageDefaults(
        name=index.name_for(ref, image),
        layers=tuple(index.layer_dirs(image)),
        env=tuple(config.env),
        entrypoint=tuple(config.entrypoint) if config.entrypoint is not None else None,
        cmd=tuple(config.cmd) if config.cmd is not None else None,
        working_dir=config.working_dir,
        user=config.user,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from containers import mount_helper

    try:
        return _run_container(args)
    finally:
        mount_helper.discard()  # forked early (see cli), and the start failed before a mount


def _run_container(args: argparse.Namespace) -> int:
    from containers import runtime
    from containers.spec import RunOptions, build_spec

    rest: list[str] = list(args.args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    image = None
    if not args.layer and args.rootfs is None:
        if not rest:
            raise UserError("no image given", hint="lamina run [OPTIONS] IMAGE [COMMAND...]")
        image = _image_defaults(args.root, rest.pop(0))
    options = RunOptions(
        command=tuple(rest),
        layers=tuple(os.path.abspath(p) for p in args.layer),
        rootfs=os.path.abspath(args.rootfs) if args.rootfs else None,
        image=image,
        name=args.name,
        hostname=args.hostname,
        env=tuple(args.env),
        env_files=tuple(args.env_file),
        workdir=args.workdir,
        user=args.user,
        entrypoint=args.entrypoint,
        interactive=args.interactive,
        tty=args.tty,
        detach=args.detach,
        auto_remove=args.rm,
        read_only=args.read_only,
        volumes=tuple(args.volume),
        tmpfs=tuple(args.tmpfs),
        network=args.network,
        add_hosts=tuple(args.add_host),
        dns=tuple(args.dns),
        init=args.init,
        privileged=args.privileged,
        cap_add=tuple(args.cap_add),
        cap_drop=tuple(args.cap_drop),
        memory=args.memory,
        memory_swap=args.memory_swap,
        cpus=args.cpus,
        cpu_shares=args.cpu_shares,
        pids_limit=args.pids_limit,
        cpuset_cpus=args.cpuset_cpus,
        userns=args.userns,
        security_opts=tuple(args.security_opt),
        publish=tuple(args.publish),
    )
    spec = build_spec(options, runtime.new_container_id())
    root: str = os.path.abspath(args.root)
    if spec.detach:
        return runtime.run_detached(spec, root)
    return runtime.run_foreground(spec, root)
