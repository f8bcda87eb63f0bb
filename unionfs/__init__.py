"""unionfs: a copy-on-write union filesystem in userspace, in the kernel overlayfs format."""

__version__ = "0.1.0"
