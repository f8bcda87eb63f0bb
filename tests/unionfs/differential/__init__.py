"""Differential testing of union filesystems against the kernel overlayfs (issue 2).

- `layers`: seeded lower layers (files, dirs, symlinks, hard links, fifos, xattrs,
  whiteouts, opaque dirs), built byte-identically as often as needed;
- `ops`: operations as printable, replayable data, and a seeded generator aimed at the
  current merged view;
- `executor`: runs one op on a mount root, returns "ok[: result]" or the errno's name;
- `snapshot`: comparable records of merged views, upper dirs and lower layers, and the
  named rules for what is deliberately not compared;
- `runner`: side-by-side runs (kernel warm-up, per-op checks, upper and kernel-remount
  checks, lower layers untouched) and a ddmin reducer for failures;
- `__main__`: `python -m tests.unionfs.differential run|replay|layers` for manual runs,
  e.g. the fuse-overlayfs survey (`--pair kernel:fuse-overlayfs`).
"""
