# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""The default seccomp filter: its decisions read off the BPF program itself (a small
interpreter below, no kernel), then the real thing: a static probe makes each screened call
inside a container, filtered and with `--security-opt seccomp=unconfined`."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from containers import seccomp
from containers.cli import UserError
from containers.spec import CAPABILITY_NUMBERS, DEFAULT_CAPABILITIES, wants_seccomp
from tests.containers.reliability_helpers import copy_rootfs
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    build_static,
    busybox_rootfs,
    lamina,
)

X86_64, I386 = seccomp.AUDIT_ARCH_X86_64, seccomp.AUDIT_ARCH_I386
ALLOW = seccomp.RET_ALLOW
EPERM = seccomp.RET_ERRNO | 1
ENOSYS = seccomp.RET_ERRNO | 38
CLONE_NEWUSER, CLONE_FILES, FORK_FLAGS = 0x10000000, 0x400, 0x01200011  # glibc's fork


def decide(program: bytes, arch: int, nr: int, arg0: int = 0) -> int:
    """Run a classic BPF program the way the kernel runs it on one syscall."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    code: list[tuple[int, int, int, int]] = [
        struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)
    ]
    acc, pc = 0, 0
    while True:
        opcode, jt, jf, k = code[pc]
        pc += 1
        if opcode == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
        elif opcode == 0x06:
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[opcode]
            pc += jt if taken else jf


DEFAULT = seccomp.program(DEFAULT_CAPABILITIES)


@pytest.mark.parametrize(
    ("arch", "nr", "arg0", "expected"),
    [
        (X86_64, 0, 0, ALLOW),  # read
        (X86_64, 59, 0, ALLOW),  # execve
        (X86_64, 250, 0, EPERM),  # keyctl
        (X86_64, 248, 0, EPERM),  # add_key
        (X86_64, 425, 0, EPERM),  # io_uring_setup
        (X86_64, 321, 0, EPERM),  # bpf
        (X86_64, 323, 0, EPERM),  # userfaultfd
        (X86_64, 165, 0, EPERM),  # mount
        (X86_64, 308, 0, EPERM),  # setns
        (X86_64, 56, FORK_FLAGS, ALLOW),  # clone, as fork and threads use it
        (X86_64, 56, FORK_FLAGS | CLONE_NEWUSER, EPERM),
        (X86_64, 272, CLONE_FILES, ALLOW),  # unshare of no namespace
        (X86_64, 272, CLONE_NEWUSER, EPERM),
        (X86_64, 272, 0x80, EPERM),  # CLONE_NEWTIME
        (X86_64, 435, 0, ENOSYS),  # clone3: glibc falls back to clone
        (X86_64, seccomp.X32_SYSCALL_BIT | 0, 0, ENOSYS),  # the x32 ABI
        (I386, 3, 0, ALLOW),  # i386 read
        (I386, 288, 0, EPERM),  # i386 keyctl
        (I386, 250, 0, ALLOW),  # i386 250 is fadvise64, not keyctl
        (I386, 22, 0, EPERM),  # i386 umount
        (I386, 120, CLONE_NEWUSER, EPERM),  # i386 clone
        (I386, 310, CLONE_FILES, ALLOW),  # i386 unshare
        (0xC00000B7, 0, 0, seccomp.RET_KILL_PROCESS),  # aarch64: no such ABI here
    ],
)
def test_the_default_filter_decides_like_dockers_profile(
    arch: int, nr: int, arg0: int, expected: int
) -> None:
    assert decide(DEFAULT, arch, nr, arg0) == expected


def test_a_capability_given_lets_through_what_docker_lets_through_with_it() -> None:
    admin = seccomp.program((*DEFAULT_CAPABILITIES, "SYS_ADMIN"))
    assert decide(admin, X86_64, 272, CLONE_NEWUSER) == ALLOW
    assert decide(admin, X86_64, 165) == ALLOW  # mount
    assert decide(admin, X86_64, 435) == ALLOW  # clone3
    assert decide(admin, X86_64, 250) == EPERM  # keyctl: never
    assert decide(seccomp.program(("BPF",)), X86_64, 321) == ALLOW
    assert decide(seccomp.program(("SYS_PTRACE",)), X86_64, 323) == ALLOW
    everything = seccomp.program(CAPABILITY_NUMBERS)
    assert decide(everything, X86_64, 425) == EPERM  # io_uring: never


def test_every_jump_lands_inside_the_program() -> None:
    for caps in ((), DEFAULT_CAPABILITIES, tuple(CAPABILITY_NUMBERS)):
        program = seccomp.program(caps)
        count = len(program) // 8
        for index in range(count):
            opcode, jt, jf, _ = struct.unpack_from("=HBBI", program, index * 8)
            if opcode not in (0x20, 0x06):
                assert index + 1 + max(jt, jf) < count
        assert struct.unpack_from("=HBBI", program, (count - 1) * 8)[0] == 0x06


@pytest.mark.parametrize(
    ("options", "privileged", "expected"),
    [
        ((), False, True),
        (("seccomp=unconfined",), False, False),
        (("seccomp:unconfined",), False, False),
        (("no-new-privileges",), False, True),
        (("no-new-privileges=true",), False, True),
        ((), True, False),
    ],
)
def test_security_opt_reads_dockers_forms(
    options: tuple[str, ...], privileged: bool, expected: bool
) -> None:
    assert wants_seccomp(options, privileged) is expected


@pytest.mark.parametrize(
    "option", ["seccomp=/etc/profile.json", "apparmor=unconfined", "no-new-privileges=false"]
)
def test_a_security_opt_lamina_does_not_have_is_refused(option: str) -> None:
    with pytest.raises(UserError, match="unsupported --security-opt"):
        wants_seccomp((option,), False)


# ---- in a container -----------------------------------------------------------------------

PROBE_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define NR32_KEYCTL 288 /* arch/x86/entry/syscalls/syscall_32.tbl */
#define NR32_GETPID 20

static void report(const char *name, long result) {
    printf("%s %d\n", name, result < 0 ? errno : 0);
}

static long call32(long nr, long a, long b, long c) { /* the i386 ABI, from 64 bits */
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    if (ret < 0 && ret > -4096) { errno = -ret; return -1; }
    return ret;
}

static void unshare_in_child(unsigned long flags) { /* the probe's namespaces stay */
    pid_t pid = fork();
    if (pid == 0) _exit(syscall(SYS_unshare, flags) < 0 ? errno : 0);
    int status;
    waitpid(pid, &status, 0);
    printf("unshare_user %d\n", WEXITSTATUS(status));
}

int main(void) {
    report("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -2 /* process */, 1));
    report("add_key", syscall(SYS_add_key, "user", "lamina", "x", 1, -2));
    unshare_in_child(CLONE_NEWUSER);
    report("unshare_files", syscall(SYS_unshare, CLONE_FILES));
    unsigned long long args[8] = {0, 0, 0, 0, SIGCHLD, 0, 0, 0};
    long child = syscall(SYS_clone3, args, sizeof args);
    if (child == 0) _exit(0);
    if (child > 0) waitpid(child, NULL, 0);
    report("clone3", child);
    char params[120];
    memset(params, 0, sizeof params);
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
    report("userfaultfd", syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */));
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_TASK_CLOCK;
    attr.exclude_kernel = 1;
    report("perf_event_open", syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
    report("keyctl_i386", call32(NR32_KEYCTL, 0, -2, 1));
    report("getpid_i386", call32(NR32_GETPID, 0, 0, 0));
    return 0;
}
"""
# What the filter answers each call (errno): the rest must work.
REFUSED = {
    "keyctl": "1",
    "add_key": "1",
    "unshare_user": "1",
    "clone3": "38",
    "io_uring_setup": "1",
    "userfaultfd": "1",
    "perf_event_open": "1",
    "keyctl_i386": "1",
}
ALLOWED = ("unshare_files", "getpid_i386")


@pytest.fixture(scope="module")
def probe_rootfs(busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rootfs = copy_rootfs(busybox_rootfs, tmp_path_factory.mktemp("seccomp") / "rootfs")
    build_static(PROBE_SOURCE, rootfs / "probe", "the syscall probe")
    return rootfs


def probe(lamina: Lamina, rootfs: Path, *options: str) -> dict[str, str]:
    out = lamina.ok("run", "--rm", *options, "--layer", str(rootfs), "--", "/probe")
    return dict(line.split() for line in out.splitlines())


@pytest.mark.root
def test_a_container_cannot_make_the_calls_the_filter_refuses(
    lamina: Lamina, probe_rootfs: Path
) -> None:
    filtered = probe(lamina, probe_rootfs)
    unconfined = probe(lamina, probe_rootfs, "--security-opt", "seccomp=unconfined")
    for name, errno in REFUSED.items():
        assert filtered[name] == errno, name
        assert unconfined[name] != errno, f"{name}: the host refuses it anyway, no proof"
    for name in ALLOWED:
        assert filtered[name] == unconfined[name] == "0", name


@pytest.mark.root
def test_cap_add_sys_admin_lets_namespaces_through(lamina: Lamina, probe_rootfs: Path) -> None:
    given = probe(lamina, probe_rootfs, "--cap-add", "SYS_ADMIN")
    assert given["unshare_user"] == given["clone3"] == "0"
    assert given["keyctl"] == "1"


@pytest.mark.root
def test_every_process_of_a_container_is_filtered_unless_asked_otherwise(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    def mode(*options: str, command: str = "grep Seccomp: /proc/self/status") -> str:
        out = lamina.ok("run", "--rm", *options, "--layer", str(busybox_rootfs), "--", "sh",
                        "-c", command)  # fmt: skip
        return out.split()[-1]

    assert mode() == "2"  # SECCOMP_MODE_FILTER
    assert mode("--init", command="grep Seccomp: /proc/1/status") == "2"  # the init too
    assert mode("-u", "1000") == "2"
    assert mode("--security-opt", "seccomp=unconfined") == "0"
    assert mode("--privileged") == "0"
    lamina.ok("run", "-d", "--name", "box", "--layer", str(busybox_rootfs), "--", "sleep", "600")
    assert lamina.ok("exec", "box", "grep", "Seccomp:", "/proc/self/status").split()[-1] == "2"
    refused = lamina("exec", "box", "unshare", "-U", "true")
    assert refused.returncode != 0 and "Operation not permitted" in refused.stderr
    privileged = lamina.ok("exec", "--privileged", "box", "grep", "Seccomp:", "/proc/self/status")
    assert privileged.split()[-1] == "0"


@pytest.mark.root
def test_an_unsupported_security_opt_is_one_line(lamina: Lamina, busybox_rootfs: Path) -> None:
    result = lamina("run", "--rm", "--security-opt", "apparmor=unconfined",
                    "--layer", str(busybox_rootfs), "--", "true")  # fmt: skip
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and "unsupported --security-opt" in result.stderr
    assert lamina.container_ids() == []
