"""FUSE over io_uring (Linux 6.14+, with the fuse module's enable_uring set): the kernel
queues each request on the queue of the CPU its caller runs on, and a thread pinned to that
CPU answers it.

Why: through /dev/fuse the kernel wakes whichever reader waits, mostly on the other CPU,
and waking an idle CPU costs 20-30 µs on a VM, twice a request (us, then the caller).
Served on the caller's CPU, a request wakes no other CPU.

Each thread owns a ring and one entry (a header buffer and a payload buffer) registered on
its CPU's queue; the kernel hands a request to the queue's most recently freed entry, so
one thread serves a CPU's requests while its others wait, and take over while it is busy
with a slow call. A commit (our answer) and the fetch of the next request are one command.
FORGET and INTERRUPT still come through /dev/fuse, and notifications go there.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator

from unionfs import fuse_protocol as proto
from unionfs.fuse_session import Handler, Reader, answer, answer_read, private_mapping
from unionfs.logger import get_logger
from unionfs.syscalls import UringEnter, address_of, io_uring_setup
from unionfs.yield_advisor import YieldAdvisor

log = get_logger(__name__)


_SETUP_SQE128 = 1 << 10  # 128-byte entries: FUSE's command lives in the extra 64
_SETUP_SINGLE_ISSUER = 1 << 12
_SETUP_DEFER_TASKRUN = 1 << 13  # completions are run when we wait, not by interrupting us
_OFF_SQES = 0x10000000
_OP_URING_CMD = 46
_PARAMS = struct.Struct("<7I12x8IQ8IQ")  # io_uring_params with its sq_off and cq_off
_SQE = struct.Struct("<BBHiIIQIIQHHi")  # the first 48 bytes; the command follows
_SQE_SIZE = 128
_CMD_AT = 48
_CQE = struct.Struct("<QiI")  # user_data res flags
_CQE_RESULT = struct.Struct("<8xi")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_COMMIT_ID_AT = _CMD_AT + 8  # in the command: flags, then commit_id
_PAYLOAD_SIZE_AT = 16  # in a ring entry's fuse_uring_ent_in_out: flags, commit_id, then this
_IOVECS = struct.Struct("<QQQQ")  # header and payload buffers: base, length each

# The payload buffer starts a page into the entry's mapping; the fixed part of a request
# (in the header buffer) is copied just before it, so handlers get the request's body in
# one piece, as /dev/fuse gives it.
_PAYLOAD_AT = mmap.PAGESIZE
_CAP_SYS_NICE = 23
# Large reads and writes come in streams, often ahead of their caller (readahead,
# writeback): no caller waits on the CPU, and yielding it cost a cold 1 GiB read a third
# more time. Small ones keep a caller waiting like any other request.
_STREAMING_BYTES = 64 * 1024
_PARAM = os.sched_param(0)
_GONE = frozenset({errno.ENOTCONN, errno.ECONNABORTED, errno.ECANCELED, errno.ENODEV})


ENABLE_URING = "/sys/module/fuse/parameters/enable_uring"


@contextlib.contextmanager
def offered(enabled: bool) -> Iterator[bool]:
    """Have the kernel offer FUSE over io_uring to mounts made meanwhile, or not (a setting
    of the whole machine, root only), and put the setting back. Yields whether this kernel
    has it at all."""
    try:
        with open(ENABLE_URING) as setting:
            before = setting.read().strip()
    except FileNotFoundError:
        yield False
        return
    with open(ENABLE_URING, "w") as setting:
        setting.write("Y" if enabled else "N")
    try:
        yield True
    finally:
        with open(ENABLE_URING, "w") as setting:
            setting.write(before)


def usable() -> bool:
    """Whether we may make rings (io_uring can be disabled, or filtered by seccomp). Asked
    before we agree to io_uring at INIT: once agreed, the kernel holds every request until
    each CPU's queue has an entry."""
    try:
        Ring().close()
    except OSError as exc:
        log.info("not using FUSE over io_uring: %s", exc.strerror)
        return False
    return True


def may_leave_sched_idle() -> bool:
    """Whether this thread could go back from SCHED_IDLE to the normal policy: that needs
    CAP_SYS_NICE, or an RLIMIT_NICE that allows our nice value."""
    import resource

    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - nice:
        return True
    with open("/proc/thread-self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    return False


def queue_count() -> int:
    """The kernel makes one queue per possible CPU, and serves only once each has an entry."""
    with open("/sys/devices/system/cpu/possible") as possible:
        last = 0
        for part in possible.read().strip().split(","):
            last = max(last, int(part.rpartition("-")[2]))
    return last + 1


class Ring:
    """One io_uring with room for a single submission at a time (all one entry needs)."""

    def __init__(self) -> None:
        params = bytearray(_PARAMS.size)
        flags = _SETUP_SQE128 | _SETUP_SINGLE_ISSUER | _SETUP_DEFER_TASKRUN
        _PARAMS.pack_into(params, 0, 0, 0, flags, *([0] * 22))
        self.fd = io_uring_setup(2, params)
        self._enter = UringEnter(self.fd)
        self._queued = 0  # entries pushed, not yet submitted: 0 or 1
        try:
            self._map(_PARAMS.unpack(params))
        except BaseException:
            os.close(self.fd)
            raise

    def _map(self, fields: tuple[int, ...]) -> None:
        sq_entries, cq_entries = fields[0], fields[1]
        # sq_off and cq_off give where in the mapped rings each field lives.
        _sq_head, sq_tail, sq_mask, _e, _f, _d, sq_array = fields[7:14]
        cq_head, cq_tail, cq_mask, _e, _o, cqes = fields[16:22]
        size = max(sq_array + 4 * sq_entries, cqes + _CQE.size * cq_entries)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        self.rings = mmap.mmap(self.fd, size, mmap.MAP_SHARED, prot, offset=0)
        self.sqes = mmap.mmap(
            self.fd, _SQE_SIZE * sq_entries, mmap.MAP_SHARED, prot, offset=_OFF_SQES
        )
        for slot in range(sq_entries):  # the submission array maps slot i to entry i, for good
            _U32.pack_into(self.rings, sq_array + 4 * slot, slot)
        self._sq_tail, self._tail = sq_tail, _U32.unpack_from(self.rings, sq_tail)[0]
        self._sq_mask: int = _U32.unpack_from(self.rings, sq_mask)[0]
        self._cq_head, self._head = cq_head, _U32.unpack_from(self.rings, cq_head)[0]
        self._cq_tail, self._cqes = cq_tail, cqes
        self._cq_mask: int = _U32.unpack_from(self.rings, cq_mask)[0]

    def push(self, sqe: bytes, commit_id: int) -> None:
        """Queue a copy of sqe, a command entry, with its commit id set (the kernel takes it
        at the next enter). We are the only producer: the tail is kept here, not read back."""
        at = (self._tail & self._sq_mask) * _SQE_SIZE
        self.sqes[at : at + _SQE_SIZE] = sqe
        _U64.pack_into(self.sqes, at + _COMMIT_ID_AT, commit_id)
        self._tail = (self._tail + 1) & 0xFFFFFFFF
        _U32.pack_into(self.rings, self._sq_tail, self._tail)
        self._queued = 1

    def submit(self) -> None:
        """Hand the queued entry to the kernel without waiting."""
        try:
            self._enter(self._queued, 0)
            self._queued = 0
        except InterruptedError:  # nothing was submitted
            pass

    def wait(self) -> int:
        """Submit what is queued, wait for a completion and return its result."""
        rings, head = self.rings, self._head
        while head == _U32.unpack_from(rings, self._cq_tail)[0]:
            try:
                self._enter(self._queued, 1)
                self._queued = 0
            except InterruptedError:  # nothing was submitted
                pass
        result: int = _CQE_RESULT.unpack_from(
            rings, self._cqes + (head & self._cq_mask) * _CQE.size
        )[0]
        self._head = head = (head + 1) & 0xFFFFFFFF
        _U32.pack_into(rings, self._cq_head, head)
        return result

    def close(self) -> None:
        self.rings.close()
        self.sqes.close()
        os.close(self.fd)


class QueueWorker:
    """A thread's ring and entry on one CPU's queue, and its serve loop."""

    def __init__(
        self, device: int, qid: int, payload_size: int, advisor: YieldAdvisor | None
    ) -> None:
        self.device = device
        self.qid = qid
        # Whether to yield to the caller we answer (shared by every queue); None where we
        # could not leave SCHED_IDLE again (may_leave_sched_idle(), asked once for all).
        self.advisor = advisor
        self.buffer = private_mapping(_PAYLOAD_AT + payload_size)
        self.iovecs = private_mapping(_IOVECS.size)
        base = address_of(self.buffer)
        self.iovecs_address = address_of(self.iovecs)
        _IOVECS.pack_into(
            self.iovecs, 0, base, proto.URING_HEADER_SIZE, base + _PAYLOAD_AT, payload_size
        )

    def serve(
        self,
        handle: Handler,
        read_into: Reader | None,
        on_failure: Callable[[], None],
        on_refused: Callable[[], None],
    ) -> None:
        with contextlib.suppress(OSError):  # an offline CPU: its queue gets no requests
            os.sched_setaffinity(0, {self.qid})  # this thread only
        try:
            ring = Ring()
        except OSError as exc:
            # Without this entry the queue may have none, and the kernel would hold its
            # requests for ever: better no mount than a hanging one.
            log.error("FUSE io_uring queue %d: %s", self.qid, exc.strerror)
            on_failure()
            return
        try:
            self._loop(ring, handle, read_into, on_failure, on_refused)
        except OSError as exc:
            # io_uring_enter failing: this entry is gone from its queue, and the kernel
            # would hold that CPU's requests for ever. The same answer as above.
            log.error("FUSE io_uring queue %d: %s", self.qid, exc.strerror)
            on_failure()
        finally:
            ring.close()

    def _loop(
        self,
        ring: Ring,
        handle: Handler,
        read_into: Reader | None,
        on_failure: Callable[[], None],
        on_refused: Callable[[], None],
    ) -> None:
        # Every request passes here: names are bound locally and the ring's entries are
        # copied from templates, a few microseconds a request less than building them.
        buffer, view = self.buffer, memoryview(self.buffer)
        unpack_header = proto.IN_HEADER.unpack_from
        unpack_entry = proto.URING_ENT.unpack_from
        pack_out, pack_size = proto.OUT_HEADER.pack_into, _U32.pack_into
        op_in, entry_at, payload = proto.URING_OP_IN_AT, proto.URING_ENT_AT, _PAYLOAD_AT
        size_at = entry_at + _PAYLOAD_SIZE_AT
        header_size, out_size = proto.IN_HEADER.size, proto.OUT_HEADER.size
        read_op = proto.READ if read_into is not None else -1
        reply = view[payload:]  # a READ reads its data right here (fuse_adapter.read_into)
        commit = self._command(proto.URING_CMD_COMMIT_AND_FETCH)
        setscheduler, idle, normal = os.sched_setscheduler, os.SCHED_IDLE, os.SCHED_OTHER
        advisor = self.advisor
        ring.push(self._command(proto.URING_CMD_REGISTER), 0)
        result = ring.wait()
        if result < 0 and -result not in _GONE:
            # The kernel has turned io_uring off for this mount: /dev/fuse serves it.
            log.warning("FUSE over io_uring refused (%s)", os.strerror(-result))
            on_refused()
            return
        while True:
            if result < 0:
                if -result not in _GONE:
                    log.error("FUSE io_uring queue %d: %s", self.qid, os.strerror(-result))
                    on_failure()
                return
            length, opcode, unique, nodeid, uid, gid, pid, _ext, _pad = unpack_header(buffer)
            _flags, commit_id, payload_size, _p, _r = unpack_entry(buffer, entry_at)
            fixed = length - header_size - payload_size  # the request's own struct
            if 0 <= fixed <= payload - op_in:
                buffer[payload - fixed : payload] = buffer[op_in : op_in + fixed]
                request = view[payload - fixed : payload + payload_size]
                if opcode == read_op:  # its request is read before its data is written here
                    assert read_into is not None
                    size, error = answer_read(read_into, nodeid, request, reply)
                else:
                    body, error = answer(handle, opcode, nodeid, uid, gid, request)
                    size = len(body)
                    if size:
                        view[payload : payload + size] = body
            else:
                size, error = 0, errno.EPROTO  # not a request we can read
            pack_out(buffer, 0, out_size + size, -error, unique)
            pack_size(buffer, size_at, size)  # the kernel reads only this of the entry
            ring.push(commit, commit_id)
            if (
                advisor is not None
                and advisor.answering(pid)
                and size + payload_size < _STREAMING_BYTES
            ):
                # Our answer wakes the caller, and a scheduler may put a woken task on an
                # idle CPU rather than a busy one: ours, busy running us, would send the
                # caller to the other CPU, and its next request to that CPU's queue, each
                # request paying a cross-CPU wake-up and both caches. As SCHED_IDLE we
                # count as idle: the caller stays, and takes the CPU from us at once. We
                # are back at the normal policy before we wait for the next request. Where
                # that costs more than it saves, the advisor says so (yield_advisor.py).
                setscheduler(0, idle, _PARAM)
                ring.submit()
                try:
                    setscheduler(0, normal, _PARAM)
                except OSError as exc:  # not expected: may_leave_sched_idle() said we could
                    log.error("FUSE io_uring queue %d stays SCHED_IDLE: %s", self.qid, exc)
                    advisor = None
            result = ring.wait()

    def _command(self, command: int) -> bytes:
        """A ring entry with a command on our entry (its commit id set when queued)."""
        sqe = bytearray(_SQE_SIZE)  # every field not set here is zero
        _SQE.pack_into(
            sqe, 0,
            _OP_URING_CMD, 0, 0, self.device,  # opcode flags ioprio fd
            command, 0, self.iovecs_address, 2,  # cmd_op pad addr len (the two iovecs)
            0, 0, 0, 0, 0,  # uring_cmd_flags user_data buf_index personality file_index
        )  # fmt: skip
        proto.URING_CMD_REQ.pack_into(sqe, _CMD_AT, 0, 0, self.qid)
        return bytes(sqe)


def start(
    device: int,
    handle: Handler,
    read_into: Reader | None,
    payload_size: int,
    per_queue: int,
    on_failure: Callable[[], None],
    on_refused: Callable[[], None],
) -> list[threading.Thread]:
    """Register per_queue entries on every CPU's queue, each served by its own thread.
    on_failure: a queue cannot serve any more; on_refused: the kernel turned io_uring off
    for this mount (/dev/fuse brings every request then)."""
    threads = []
    advisor = YieldAdvisor() if may_leave_sched_idle() else None
    for qid in range(queue_count()):
        for i in range(per_queue):
            worker = QueueWorker(device, qid, payload_size, advisor)
            thread = threading.Thread(
                target=worker.serve,
                args=(handle, read_into, on_failure, on_refused),
                name=f"fuse-q{qid}-{i}",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
    return threads
