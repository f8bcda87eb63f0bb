"""User-facing limits (`--memory 64m`, `--cpus 0.5`...) and the cgroup file values they mean.

Pure functions: parsing and conversion are decided here once, for both cgroup versions,
and tested without a cgroup tree.
"""

from __future__ import annotations

from containers.records import Record

CPU_PERIOD_US = 100_000
MIN_MEMORY = 6 * 1024 * 1024  # docker's floor: below it a container cannot even start
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262_144

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

# The parsers below are hand-written: importing re cost every container start milliseconds.
# They take what the regexes they replace took, r"^\s*(\d+(?:\.\d+)?)\s*([kmgtb]?)(?:i?b)?\s*$"
# (ignoring case) for a size and r"^\d+(-\d+)?(,\d+(-\d+)?)*$" for a cpu list, but for
# deliberate refusals: digits and unit letters are ASCII only (re's \d took any Unicode
# decimal digit, which float() then read, and its case folding took the Kelvin sign for k,
# 'ı' and 'İ' for i), and a cpu list may not end in a newline (re's $ let one through).
# Whitespace is str.isspace()'s, which is exactly re's \s.


class InvalidLimit(ValueError):
    """A limit the user gave that cannot be applied; the message names the option."""


class Resources(Record, frozen=True):
    """Validated limits. None means "no limit"; memory_swap -1 means unlimited swap."""

    memory: int | None = None
    memory_swap: int | None = None  # memory + swap, like docker's --memory-swap
    cpu_quota_us: int | None = None
    cpu_period_us: int = CPU_PERIOD_US
    cpu_shares: int | None = None
    pids_limit: int | None = None
    cpuset_cpus: str | None = None


def parse_size(text: str, option: str) -> int:
    """'64m' -> 67108864: docker's binary units (b, k, m, g, t; 'mb'/'mib' also accepted)."""
    size = _split_size(text)
    if size is None:
        raise InvalidLimit(f"invalid size for {option}: {text!r} (expected e.g. 512k, 64m, 1g)")
    number, unit = size
    return int(float(number) * _UNITS[unit])


def _split_size(text: str) -> tuple[str, str] | None:
    """'1.5 GiB' -> ('1.5', 'g'): the number (digits, maybe a fraction) and the unit letter
    ('' when there is none), or None when text is not a size."""
    text = text.strip()
    end = _digits_end(text, 0)
    if end == 0:
        return None
    if text[end : end + 1] == ".":
        fraction_end = _digits_end(text, end + 1)
        if fraction_end > end + 1:  # '1.' is not a number here, and '1.m' no size
            end = fraction_end
    number, rest = text[:end], text[end:].lstrip()
    if not rest.isascii():  # before lower(): it makes the Kelvin sign a 'k'
        return None
    rest = rest.lower()
    unit = rest[:1] if rest[:1] in ("k", "m", "g", "t", "b") else ""
    # What may follow the letter: nothing, 'b' or 'ib' ('10ib' was taken too, as 10 bytes).
    if rest[len(unit) :] not in ("", "b", "ib"):
        return None
    return number, unit


def _digits_end(text: str, start: int) -> int:
    """Where the run of ASCII digits starting at text[start] ends."""
    end = start
    while end < len(text) and "0" <= text[end] <= "9":
        end += 1
    return end


def _is_number(text: str) -> bool:
    """One or more ASCII digits and nothing else (str.isdigit alone takes '²' or '١')."""
    return text.isascii() and text.isdigit()


def parse_cpus(text: str, host_cpus: int) -> int:
    """'0.5' -> a CFS quota of 50000us per 100000us period."""
    try:
        cpus = float(text)
    except ValueError:
        raise InvalidLimit(f"invalid value for --cpus: {text!r} (expected e.g. 0.5)") from None
    if not 0.01 <= cpus <= host_cpus:
        raise InvalidLimit(f"--cpus must be between 0.01 and {host_cpus} (the host's CPUs)")
    return round(cpus * CPU_PERIOD_US)


def parse_cpu_list(text: str, host_cpus: int) -> str:
    """Validate a cpuset list such as '0-1,3' against the CPUs the host has."""
    # Each comma-separated part is a number or a range of two: '1,,2', '0-' or '1-2-3' are not.
    well_formed = all(
        len(bounds) <= 2 and all(_is_number(n) for n in bounds)
        for bounds in (part.split("-") for part in text.split(","))
    )
    if not well_formed:
        raise InvalidLimit(f"invalid --cpuset-cpus {text!r} (expected e.g. 0-1,3)")
    for part in text.split(","):
        bounds = [int(n) for n in part.split("-")]
        if bounds[0] > bounds[-1] or bounds[-1] >= host_cpus:
            raise InvalidLimit(
                f"invalid --cpuset-cpus {text!r}: this host has CPUs 0-{host_cpus - 1}"
            )
    return text


def build_resources(
    *,
    memory: str | None = None,
    memory_swap: str | None = None,
    cpus: str | None = None,
    cpu_shares: int | None = None,
    pids_limit: int | None = None,
    cpuset_cpus: str | None = None,
    host_cpus: int = 1,
) -> Resources:
    """Parse and cross-check the limit options; raise InvalidLimit with a one-line reason."""
    mem = parse_size(memory, "--memory") if memory is not None else None
    if mem is not None and mem < MIN_MEMORY:
        raise InvalidLimit("--memory must be at least 6m")
    swap: int | None = None
    if memory_swap is not None:
        if mem is None:
            raise InvalidLimit("--memory-swap needs --memory as well")
        swap = -1 if memory_swap.strip() == "-1" else parse_size(memory_swap, "--memory-swap")
        if swap != -1 and swap < mem:
            raise InvalidLimit("--memory-swap must be at least --memory (it counts both)")
    elif mem is not None:
        swap = 2 * mem  # docker's default: as much swap as memory
    if cpu_shares is not None and not MIN_CPU_SHARES <= cpu_shares <= MAX_CPU_SHARES:
        raise InvalidLimit(f"--cpu-shares must be between {MIN_CPU_SHARES} and {MAX_CPU_SHARES}")
    if pids_limit is not None and pids_limit <= 0:
        pids_limit = None  # docker: 0 or -1 mean unlimited
    return Resources(
        memory=mem,
        memory_swap=swap,
        cpu_quota_us=parse_cpus(cpus, host_cpus) if cpus is not None else None,
        cpu_shares=cpu_shares,
        pids_limit=pids_limit,
        cpuset_cpus=parse_cpu_list(cpuset_cpus, host_cpus) if cpuset_cpus else None,
    )


# One setting: (controller, file name, value), written in list order.
Setting = tuple[str, str, str]


def v1_settings(res: Resources, *, swap_accounting: bool = True) -> list[Setting]:
    """The files of cgroup v1 controllers that apply res."""
    out: list[Setting] = []
    if res.memory is not None:
        out.append(("memory", "memory.limit_in_bytes", str(res.memory)))
        if swap_accounting and res.memory_swap is not None:
            out.append(("memory", "memory.memsw.limit_in_bytes", str(res.memory_swap)))
    if res.cpu_quota_us is not None:
        out.append(("cpu", "cpu.cfs_period_us", str(res.cpu_period_us)))
        out.append(("cpu", "cpu.cfs_quota_us", str(res.cpu_quota_us)))
    if res.cpu_shares is not None:
        out.append(("cpu", "cpu.shares", str(res.cpu_shares)))
    if res.pids_limit is not None:
        out.append(("pids", "pids.max", str(res.pids_limit)))
    if res.cpuset_cpus is not None:
        out.append(("cpuset", "cpuset.cpus", res.cpuset_cpus))
    return out


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) -> cpu.weight (1..10000), the conversion runc and crun use."""
    return 1 + ((shares - 2) * 9999) // 262142


def v2_settings(res: Resources) -> list[Setting]:
    """The files of a cgroup v2 directory that apply res."""
    out: list[Setting] = []
    if res.memory is not None:
        out.append(("memory", "memory.max", str(res.memory)))
        if res.memory_swap is not None:
            swap = "max" if res.memory_swap == -1 else str(res.memory_swap - res.memory)
            out.append(("memory", "memory.swap.max", swap))
    if res.cpu_quota_us is not None:
        out.append(("cpu", "cpu.max", f"{res.cpu_quota_us} {res.cpu_period_us}"))
    if res.cpu_shares is not None:
        out.append(("cpu", "cpu.weight", str(shares_to_weight(res.cpu_shares))))
    if res.pids_limit is not None:
        out.append(("pids", "pids.max", str(res.pids_limit)))
    if res.cpuset_cpus is not None:
        out.append(("cpuset", "cpuset.cpus", res.cpuset_cpus))
    return out


def controllers_needed(settings: list[Setting]) -> list[str]:
    return sorted({controller for controller, _, _ in settings})


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0" + unit, unit)
    return f"{n}B"
