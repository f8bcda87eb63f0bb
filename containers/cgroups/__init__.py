"""cgroups: one `Cgroup` interface (base.py), drivers for v1, v2 and the hybrid layout.

`detect.open_cgroup` picks the driver once, from the host's mounts; callers never branch on
the version. `resources` turns user limits into cgroup file values, as pure functions.
"""
