"""lamina's container runtime: images, union-mounted root filesystems, namespaces, cgroups."""
