"""The default seccomp filter: the syscalls a container may not make, as a BPF program.

Capabilities keep a container from what the kernel gates on them, but an unprivileged
process can still reach kernel code that is not namespaced or has been a way out before:
the keyrings, io_uring, bpf, perf events, userfaultfd, and above all new user namespaces,
in which it would hold every capability again (and so mount, and reach far more code).
docker's default profile refuses these; so does this filter, each unless the container was
given the capability docker lets it through with (`--cap-add SYS_ADMIN` lets namespaces and
mounts through, as there). `--privileged` and `--security-opt seccomp=unconfined` run
without it.

This is a deny list, where docker's is an allow list of ~370 names: what is not named here
is allowed, so a syscall newer than this file works (and is not screened). Refused calls
fail with EPERM, as docker's do; clone3 fails with ENOSYS, because its flags are out of
a filter's reach, and glibc then falls back to clone, whose flags are checked.

No FUSE, no namespaces here: `program()` builds the bytes, `syscalls.seccomp_filter` loads
them in the container's first process, just before it executes the command.
"""

from __future__ import annotations

import struct
from collections.abc import Collection

from containers.records import Record

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_NR, _ARCH, _ARG0_LOW = 0, 4, 16  # args[0]'s low half on a little-endian machine

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000  # the x32 ABI: x86_64's arch value, numbers with this bit

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
EPERM, ENOSYS = 1, 38

# Classic BPF opcodes (linux/bpf_common.h).
_LD_W_ABS = 0x20
_JEQ_K, _JGE_K, _JSET_K = 0x15, 0x35, 0x45
_RET_K = 0x06
_INSTRUCTION = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k

# Namespace flags: clone's (docker's mask, 0x7E020000) and, for unshare, CLONE_NEWTIME,
# which in clone's flags is part of the exit signal.
CLONE_NAMESPACES = 0x7E020000
UNSHARE_NAMESPACES = CLONE_NAMESPACES | 0x80

# What to do with a call: refuse it, or check its first argument against a mask.
REFUSE, REFUSE_ENOSYS, NAMESPACE_FLAGS = "refuse", "enosys", "namespace flags"


class Rule(Record, frozen=True):
    """One screened syscall: its number on x86_64 and on i386 (None: not in that ABI), what
    is done with it, and the capabilities any one of which lets it through (none: never)."""

    name: str
    x86_64: int | None
    i386: int | None
    lifted_by: tuple[str, ...] = ()
    action: str = REFUSE
    mask: int = 0  # NAMESPACE_FLAGS: the flags of the first argument that are refused


_MOUNTS = ("SYS_ADMIN",)
RULES = (
    # Keyrings are not namespaced: a container would share the host's.
    Rule("add_key", 248, 286),
    Rule("request_key", 249, 287),
    Rule("keyctl", 250, 288),
    # io_uring: a large surface that seccomp cannot screen (docker refuses it since 2023).
    Rule("io_uring_setup", 425, 425),
    Rule("io_uring_enter", 426, 426),
    Rule("io_uring_register", 427, 427),
    Rule("bpf", 321, 357, ("SYS_ADMIN", "BPF")),
    Rule("perf_event_open", 298, 336, ("SYS_ADMIN", "PERFMON")),
    Rule("userfaultfd", 323, 374, ("SYS_PTRACE",)),
    Rule("syslog", 103, 103, ("SYSLOG",)),  # the host's kernel log
    Rule("open_by_handle_at", 304, 342, ("DAC_READ_SEARCH",)),  # the "shocker" way out
    # New namespaces (a user namespace gives back every capability), and mounts.
    Rule("clone", 56, 120, _MOUNTS, NAMESPACE_FLAGS, CLONE_NAMESPACES),
    Rule("unshare", 272, 310, _MOUNTS, NAMESPACE_FLAGS, UNSHARE_NAMESPACES),
    Rule("clone3", 435, 435, _MOUNTS, REFUSE_ENOSYS),
    Rule("setns", 308, 346, _MOUNTS),
    Rule("mount", 165, 21, _MOUNTS),
    Rule("umount", None, 22, _MOUNTS),  # i386's oldumount; x86_64 has umount2 only
    Rule("umount2", 166, 52, _MOUNTS),
    Rule("pivot_root", 155, 217, _MOUNTS),
    Rule("open_tree", 428, 428, _MOUNTS),
    Rule("move_mount", 429, 429, _MOUNTS),
    Rule("fsopen", 430, 430, _MOUNTS),
    Rule("fsconfig", 431, 431, _MOUNTS),
    Rule("fsmount", 432, 432, _MOUNTS),
    Rule("fspick", 433, 433, _MOUNTS),
    Rule("mount_setattr", 442, 442, _MOUNTS),
)


def screened(capabilities: Collection[str]) -> list[Rule]:
    """The rules that apply to a container holding these capabilities."""
    held = set(capabilities)
    return [rule for rule in RULES if not held.intersection(rule.lifted_by)]


class _Assembler:
    """Instructions with jumps to named labels, resolved when the program is done (classic
    BPF jumps forward only, by at most 255 instructions)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def load(self, offset: int) -> None:
        self.code.append((_LD_W_ABS, 0, 0, offset))

    def jump(self, opcode: int, value: int, if_true: str | int, if_false: str | int = 0) -> None:
        self.code.append((opcode, if_true, if_false, value))

    def ret(self, value: int) -> None:
        self.code.append((_RET_K, 0, 0, value))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (opcode, if_true, if_false, k) in enumerate(self.code):
            out += _INSTRUCTION.pack(
                opcode, self._offset(index, if_true), self._offset(index, if_false), k
            )
        return bytes(out)

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"jump to {target} out of reach")
        return offset


def program(capabilities: Collection[str]) -> bytes:
    """The filter for a container holding these capabilities (x86_64, with its i386 and
    x32 ABIs): an array of struct sock_filter."""
    rules = screened(capabilities)
    asm = _Assembler()
    asm.load(_ARCH)
    asm.jump(_JEQ_K, AUDIT_ARCH_X86_64, "x86_64")
    asm.jump(_JEQ_K, AUDIT_ARCH_I386, "i386")
    asm.ret(RET_KILL_PROCESS)  # no other ABI reaches an x86_64 kernel
    for abi in ("x86_64", "i386"):
        asm.label(abi)
        asm.load(_NR)
        if abi == "x86_64":
            asm.jump(_JGE_K, X32_SYSCALL_BIT, f"{abi}:enosys")  # nothing runs x32
        for rule in rules:
            number = rule.x86_64 if abi == "x86_64" else rule.i386
            if number is None:
                continue
            if rule.action == REFUSE:
                target = "eperm"
            elif rule.action == REFUSE_ENOSYS:
                target = "enosys"
            else:
                target = rule.name  # its argument check, after the ALLOW below
            asm.jump(_JEQ_K, number, f"{abi}:{target}")
        asm.ret(RET_ALLOW)
        for rule in rules:
            if rule.action == NAMESPACE_FLAGS:
                asm.label(f"{abi}:{rule.name}")
                asm.load(_ARG0_LOW)
                asm.jump(_JSET_K, rule.mask, f"{abi}:eperm")
                asm.ret(RET_ALLOW)
        asm.label(f"{abi}:eperm")
        asm.ret(RET_ERRNO | EPERM)
        asm.label(f"{abi}:enosys")
        asm.ret(RET_ERRNO | ENOSYS)
    return asm.assemble()
