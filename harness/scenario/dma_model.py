"""The oracle of the DMA fuzzer (`edu-dma fuzz`, scenario dma-fuzz).

The guest runs a sequence of map / unmap / device-write (dw) / device-read
(dr) operations in a small IOVA window and prints, per operation, what the
kernel answered and what the DMA observably did (images/guest/edu-dma/fuzz.h).
This module replays the printed sequence on a model of the uAPI and of the
IOMMU and predicts every outcome:

- map / unmap: the return value and the unmapped size, by the uAPI's rules
  (VFIO type1 v2: an unmap may not bisect a mapping, EINVAL; iommufd: areas
  are removed in IOVA order and a partly covered one stops the unmap with
  ENOENT, after the earlier ones are gone; an unmap that removes nothing is
  size 0 (type1) or ENOENT (iommufd); an overlapping map is EEXIST);
- a device write: exactly which pool bytes change, and to what (the device
  buffer holds a known pattern), nothing else;
- a device read: what the device gets from every page it touches (the pool
  bytes where the IOVA page is mapped readable; where it is not, anything but
  the bytes a stale or permission-ignoring translation would give);
- a DMA that a remapped page lets through or blocks as its previous mapping's
  permission would have, not its own, is named so (stale-permission);
- faults: every blocked piece of a DMA (an IOVA page with no mapping or
  without the permission) is a fault from that device, at an address inside
  the piece, of that access and kind; no other fault may come from it.
  Reports are rate-limited (10 per 5 s): from a fresh rate-limit window the
  first blocked piece must be reported, and at least min(10, pieces) reports
  must come.

The first mismatch is the verdict: `Mismatch` carries the operation index, a
kind (for shrinking: a smaller sequence must fail the same way) and the
model's state at that point. `ddmin` shrinks a failing sequence by delta
debugging, replaying candidates in the guest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from harness.logwatch import Event

_MASK64 = (1 << 64) - 1
EINVAL, ENOENT, EEXIST = 22, 2, 17
# The kernel prints IOMMU fault reports at most 10 per 5 s window.
RATELIMIT_BURST = 10
RATELIMIT_INTERVAL_S = 5.0

OpKind = Literal["map", "unmap", "dw", "dr"]


def splitmix64(state: int) -> tuple[int, int]:
    """(new state, output), as edu_dma.c's splitmix64()."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def pattern(key: int, length: int) -> bytes:
    """edu_dma.c's fill_pattern(): the splitmix64 stream of key, little endian."""
    out = bytearray()
    s = key
    while len(out) < length:
        s, v = splitmix64(s)
        out += v.to_bytes(8, "little")
    return bytes(out[:length])


def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


@dataclass(frozen=True)
class Op:
    kind: OpKind
    iova: int
    length: int
    pool: int = 0
    perm: str = ""  # map: "r", "w", "rw"
    key: int = 0  # dw: the device buffer's pattern

    def token(self) -> str:
        """This operation in `edu-dma fuzz --ops` syntax."""
        if self.kind == "map":
            return f"map:{self.iova:#x}:{self.length:#x}:{self.pool:#x}:{self.perm}"
        if self.kind == "unmap":
            return f"unmap:{self.iova:#x}:{self.length:#x}"
        if self.kind == "dw":
            return f"dw:{self.iova:#x}:{self.length}:{self.key:#x}"
        return f"dr:{self.iova:#x}:{self.length}"

    def describe(self) -> str:
        if self.kind == "map":
            return f"map {self.iova:#x}+{self.length:#x} -> pool {self.pool:#x} {self.perm}"
        if self.kind == "unmap":
            return f"unmap {self.iova:#x}+{self.length:#x}"
        what = "device write" if self.kind == "dw" else "device read"
        return f"{what} {self.iova:#x}+{self.length}"


def replay_ops(ops: Iterable[Op]) -> str:
    return ";".join(o.token() for o in ops)


@dataclass(frozen=True)
class Observed:
    index: int
    op: Op
    ret: int | None = None
    unmapped: int | None = None
    landed: tuple[tuple[int, int, int], ...] = ()  # dw: (pool offset, length, fnv1a)
    got: tuple[int, ...] = ()  # dr: fnv1a per page piece
    err: str | None = None
    pool_changed: bool = False


@dataclass
class Run:
    """One `edu-dma fuzz` run, parsed from its output."""

    backend: str
    bdf: str
    seed: int
    page: int
    pool_key: int
    pool_len: int
    ops: list[Observed]
    uptime: float | None = None
    end_uptime: float | None = None
    complete: bool = False  # the closing KTAP result was printed

    def replay_args(self, ops: Iterable[Op] | None = None) -> str:
        """The helper's arguments that replay `ops` (default: this run's)."""
        seq = [o.op for o in self.ops] if ops is None else list(ops)
        return (
            f"--bdf {self.bdf} --backend {self.backend} --seed {self.seed:#x} fuzz --ops '{replay_ops(seq)}'"
        )


_DIAG = re.compile(r"^# (?P<key>[a-z_0-9]+)=(?P<value>\S+)\s*$")
_OP = re.compile(r"^# op (?P<k>\d+) (?P<kind>map|unmap|dw|dr) (?P<rest>.*)$")


def _kv(rest: str) -> dict[str, str]:
    out = {}
    for part in rest.split():
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    # err= takes the rest of the line
    if " err=" in f" {rest}":
        out["err"] = rest.split("err=", 1)[1]
    return out


def parse(output: str) -> Run:
    """A Run from the helper's KTAP output; ValueError if it is not one."""
    diag: dict[str, str] = {}
    ops: list[Observed] = []
    complete = False
    for raw in output.splitlines():
        line = raw.strip()
        if m := _OP.match(line):
            ops.append(_observed(int(m["k"]), m["kind"], _kv(m["rest"])))
        elif m := _DIAG.match(line):
            diag[m["key"]] = m["value"]
        elif re.match(r"^(?:not )?ok \d+ fuzz sequence ran", line):
            complete = True
    try:
        return Run(
            backend=diag["backend"],
            bdf=diag["bdf"],
            seed=int(diag["seed"], 0),
            page=int(diag["page_size"]),
            pool_key=int(diag["fuzz_pool_key"], 0),
            pool_len=int(diag["fuzz_pool_len"], 0),
            ops=ops,
            uptime=float(diag["fuzz_uptime"]) if "fuzz_uptime" in diag else None,
            end_uptime=float(diag["fuzz_end_uptime"]) if "fuzz_end_uptime" in diag else None,
            complete=complete,
        )
    except KeyError as exc:
        raise ValueError(f"not edu-dma fuzz output: no {exc.args[0]}") from None


def _observed(k: int, kind: str, kv: dict[str, str]) -> Observed:
    iova, length = int(kv["iova"], 0), int(kv["len"], 0)
    if kind == "map":
        op = Op("map", iova, length, pool=int(kv["pool"], 0), perm=kv["perm"])
        return Observed(k, op, ret=int(kv["ret"]))
    if kind == "unmap":
        return Observed(k, Op("unmap", iova, length), ret=int(kv["ret"]), unmapped=int(kv["unmapped"], 0))
    err = kv.get("err")
    if kind == "dw":
        landed: list[tuple[int, int, int]] = []
        spec = kv.get("landed", "none")
        if spec != "none":
            for item in spec.split(","):
                where, h = item.split(":")
                off, n = where.split("+")
                landed.append((int(off, 0), int(n), int(h, 16)))
        return Observed(k, Op("dw", iova, length, key=int(kv["data"], 0)), landed=tuple(landed), err=err)
    got = tuple(int(h, 16) for h in kv.get("got", "none").split(",") if h != "none")
    return Observed(k, Op("dr", iova, length), got=got, err=err, pool_changed=kv.get("pool_changed") == "1")


# ---------------------------------------------------------------------------
# the model


@dataclass
class Mapping:
    iova: int
    length: int
    pool: int
    perm: str
    since: int  # operation index that made it

    @property
    def last(self) -> int:
        return self.iova + self.length - 1


@dataclass(frozen=True)
class Ghost:
    """What an IOVA page translated to until an unmap removed it: where a
    stale translation would still go."""

    pool: int  # pool offset of the page
    perm: str
    mapped_at: int
    unmapped_at: int


@dataclass(frozen=True)
class Piece:
    """The part of a DMA inside one IOVA page."""

    iova: int
    length: int
    pool: int | None  # where it lands / reads (None: blocked)
    blocked: str | None  # None, "unmapped", "permission"


@dataclass(frozen=True)
class PredictedFault:
    index: int  # operation
    iova: int
    length: int
    access: str  # "read" | "write"
    kind: str  # "unmapped" | "permission"

    def matches(self, event: Event) -> bool:
        try:
            addr = int(str(event.fields.get("address")), 0)
        except ValueError:
            return False
        if not self.iova & ~3 <= addr < self.iova + self.length:
            return False
        access = str(event.fields.get("access", "unknown"))
        if access not in ("unknown", "", self.access):
            return False
        if event.signature == "smmuv3-event":
            want = "F_TRANSLATION" if self.kind == "unmapped" else "F_PERMISSION"
            return str(event.fields.get("name", want)) == want
        return True

    def describe(self) -> str:
        return f"{self.access} of {self.iova:#x}+{self.length} ({self.kind})"


@dataclass(frozen=True)
class Mismatch:
    index: int  # operation index (-1: the run as a whole)
    kind: str  # a stable category, e.g. "stale-translation", "missed-fault"
    detail: str
    state: str  # the model's state before the operation

    def reason(self, run: Run) -> str:
        op = run.ops[self.index].op.describe() if 0 <= self.index < len(run.ops) else "the run"
        return f"seed {run.seed:#x} ({run.backend}) op {self.index} ({op}): {self.kind}: {self.detail}"


class Model:
    def __init__(self, backend: str, page: int, pool: bytes, wo_reads_allowed: bool) -> None:
        self.backend = backend
        self.page = page
        self.pool = bytearray(pool)
        self.wo_reads_allowed = wo_reads_allowed
        self.maps: list[Mapping] = []
        self.ghosts: dict[int, Ghost] = {}
        # page -> the mapping it had before its live one (a remap), to name
        # a permission the IOMMU kept from it
        self.before: dict[int, Ghost] = {}

    # -- state

    def describe(self) -> str:
        if not self.maps:
            live = "nothing mapped"
        else:
            live = ", ".join(
                f"{m.iova:#x}+{m.length:#x}->pool {m.pool:#x} {m.perm} (op {m.since})"
                for m in sorted(self.maps, key=lambda m: m.iova)
            )
        ghosts = sorted(self.ghosts.items())[-6:]
        gone = ", ".join(f"{p:#x} (pool {g.pool:#x}, unmapped op {g.unmapped_at})" for p, g in ghosts)
        return f"mapped: {live}" + (f"; unmapped pages: {gone}" if gone else "")

    def find(self, iova: int) -> Mapping | None:
        return next((m for m in self.maps if m.iova <= iova <= m.last), None)

    # -- uAPI

    def map(self, op: Op, k: int) -> int:
        pg = self.page
        if op.length == 0 or (op.iova | op.length | op.pool) % pg or not op.perm:
            return -EINVAL
        if op.pool + op.length > len(self.pool):
            return -EINVAL
        if any(m.iova <= op.iova + op.length - 1 and op.iova <= m.last for m in self.maps):
            return -EEXIST
        self.maps.append(Mapping(op.iova, op.length, op.pool, op.perm, k))
        for p in range(op.iova, op.iova + op.length, pg):
            if (g := self.ghosts.pop(p, None)) is not None:
                self.before[p] = g
            else:
                self.before.pop(p, None)
        return 0

    def _remove(self, m: Mapping, k: int) -> None:
        self.maps.remove(m)
        for off in range(0, m.length, self.page):
            self.ghosts[m.iova + off] = Ghost(m.pool + off, m.perm, m.since, k)
            self.before.pop(m.iova + off, None)

    def unmap(self, op: Op, k: int) -> tuple[int, int]:
        """(ret, unmapped bytes)."""
        first, last = op.iova, op.iova + op.length - 1
        inside = sorted((m for m in self.maps if m.iova <= last and first <= m.last), key=lambda m: m.iova)
        if self.backend == "type1":
            if op.length == 0 or (op.iova | op.length) % self.page:
                return -EINVAL, 0
            # v2: no mapping may be bisected by either end
            if any(m.iova < first <= m.last or m.iova <= last < m.last for m in inside):
                return -EINVAL, 0
            for m in inside:
                self._remove(m, k)
            return 0, sum(m.length for m in inside)
        # iommufd: areas in IOVA order; a partial one stops the unmap
        if op.length == 0:
            return -EINVAL, 0
        done = 0
        for m in inside:
            if m.iova < first or m.last > last:
                return -ENOENT, 0
            self._remove(m, k)
            done += m.length
        return (0, done) if done else (-ENOENT, 0)

    # -- DMA

    def allows(self, perm: str, need: str) -> bool:
        return need in perm or (need == "r" and self.wo_reads_allowed)

    def pieces(self, op: Op, need: str) -> list[Piece]:
        out = []
        a, end = op.iova, op.iova + op.length
        while a < end:
            b = min((a // self.page + 1) * self.page, end)
            m = self.find(a)
            if m is None:
                out.append(Piece(a, b - a, None, "unmapped"))
            elif not self.allows(m.perm, need):
                out.append(Piece(a, b - a, None, "permission"))
            else:
                out.append(Piece(a, b - a, m.pool + (a - m.iova), None))
            a = b
        return out

    def would_reach(self, piece: Piece) -> list[tuple[str, int]]:
        """Where a translation that should not exist would take a blocked
        piece: (what, pool offset)."""
        out = []
        m = self.find(piece.iova)
        if m is not None:
            out.append(
                (f"the {m.perm} mapping of op {m.since} (permission ignored)", m.pool + piece.iova - m.iova)
            )
        page = piece.iova - piece.iova % self.page
        if (g := self.ghosts.get(page)) is not None:
            out.append(
                (
                    f"the mapping of op {g.mapped_at}, unmapped at op {g.unmapped_at} (stale translation)",
                    g.pool + piece.iova - page,
                )
            )
        return out

    def kept_permission(self, iova: int, need: str) -> str | None:
        """If the live mapping of iova replaced an earlier one whose
        permission decides `need` the other way: how a DMA that went as
        the earlier permission says reads (None otherwise)."""
        m, g = self.find(iova), self.before.get(iova - iova % self.page)
        if m is None or g is None or self.allows(m.perm, need) == self.allows(g.perm, need):
            return None
        return (
            f"as the {g.perm} mapping of op {g.mapped_at} (unmapped at op {g.unmapped_at}) would have:"
            f" the remap of op {m.since} kept the old permission"
        )


def _runs(old: bytes, new: bytes) -> list[tuple[int, int, int]]:
    out = []
    i, n = 0, len(old)
    while i < n:
        if old[i] == new[i]:
            i += 1
            continue
        j = i
        while j < n and old[j] != new[j]:
            j += 1
        out.append((i, j - i, fnv1a(new[i:j])))
        i = j
    return out


@dataclass
class Verdict:
    mismatch: Mismatch | None
    faults: list[PredictedFault] = field(default_factory=list)
    state: str = ""  # the model's final state
    model: Model | None = None  # the model after the last operation replayed
    # the model's state before each operation (and, on a pass, after the last)
    states: list[str] = field(default_factory=list)


def replay(run: Run, wo_reads_allowed: bool) -> Verdict:
    """Replays the run on the model; the first data or uAPI mismatch (faults
    are judged by check_faults)."""
    model = Model(run.backend, run.page, pattern(run.pool_key, run.pool_len), wo_reads_allowed)
    faults: list[PredictedFault] = []
    states: list[str] = []
    for obs in run.ops:
        k, op = obs.index, obs.op
        state = model.describe()
        states.append(state)

        def bad(kind: str, detail: str, k: int = k, state: str = state) -> Verdict:
            return Verdict(Mismatch(k, kind, detail, state), faults, model.describe(), model, states)

        if op.kind == "map":
            want = model.map(op, k)
            if obs.ret != want:
                # follow the kernel, so that later operations are judged on its state
                if obs.ret == 0 and want != 0:
                    return bad(
                        "uapi", f"map returned 0, the model expects {want} (overlap or bad argument accepted)"
                    )
                return bad("uapi", f"map returned {obs.ret}, the model expects {want}")
        elif op.kind == "unmap":
            want_ret, want_len = model.unmap(op, k)
            if (obs.ret, obs.unmapped or 0) != (want_ret, want_len):
                return bad(
                    "uapi",
                    f"unmap returned {obs.ret} (unmapped {obs.unmapped or 0:#x}),"
                    f" the model expects {want_ret} (unmapped {want_len:#x})",
                )
        elif obs.err is not None:
            return bad("dma-error", f"the DMA did not complete: {obs.err}")
        elif op.kind == "dw":
            data = pattern(op.key, 4096)
            new = bytearray(model.pool)
            off = 0
            for p in model.pieces(op, "w"):
                if p.pool is not None:
                    new[p.pool : p.pool + p.length] = data[off : off + p.length]
                else:
                    faults.append(PredictedFault(k, p.iova, p.length, "write", p.blocked or ""))
                off += p.length
            want_runs = _runs(bytes(model.pool), bytes(new))
            if list(obs.landed) != want_runs:
                return bad(*_explain_write(model, op, obs, new))
            model.pool = new
        else:  # dr
            if obs.pool_changed:
                return bad("data", "a device read changed host memory")
            pcs = model.pieces(op, "r")
            if len(obs.got) != len(pcs):
                return bad("data", f"{len(obs.got)} page pieces reported, {len(pcs)} expected")
            for p, got in zip(pcs, obs.got, strict=True):
                if p.pool is not None:
                    want_h = fnv1a(bytes(model.pool[p.pool : p.pool + p.length]))
                    if got != want_h:
                        detail = f"the device read {p.iova:#x}+{p.length} (pool {p.pool:#x})"
                        detail += " and got other data"
                        if kept := model.kept_permission(p.iova, "r"):
                            return bad("stale-permission", f"{detail} (blocked?), {kept}")
                        return bad("read-data", detail)
                    continue
                faults.append(PredictedFault(k, p.iova, p.length, "read", p.blocked or ""))
                for what, src in model.would_reach(p):
                    if got == fnv1a(bytes(model.pool[src : src + p.length])):
                        kind = "stale-translation" if "stale" in what else "permission-ignored"
                        detail = f"a read of {p.iova:#x}+{p.length} ({p.blocked}) got the data of {what}"
                        if kind == "permission-ignored" and (kept := model.kept_permission(p.iova, "r")):
                            kind, detail = "stale-permission", f"{detail}, {kept}"
                        return bad(kind, detail)
    states.append(model.describe())  # and after the last
    return Verdict(None, faults, model.describe(), model, states)


def _explain_write(model: Model, op: Op, obs: Observed, new: bytearray) -> tuple[str, str]:
    """(kind, detail): why the landed bytes differ from the prediction, most
    telling first."""
    want = {(o, n): h for o, n, h in _runs(bytes(model.pool), bytes(new))}
    got = {(o, n): h for o, n, h in obs.landed}
    # bytes that landed where the model says nothing may
    pcs = model.pieces(op, "w")
    off = 0
    for p in pcs:
        if p.pool is None:
            for what, dst in model.would_reach(p):
                if any(o <= dst < o + n for o, n in got):
                    kind = "stale-translation" if "stale" in what else "permission-ignored"
                    detail = f"a write to {op.iova + off:#x}+{p.length} ({p.blocked}) landed in {what}"
                    if kind == "permission-ignored" and (kept := model.kept_permission(p.iova, "w")):
                        return "stale-permission", f"{detail}, {kept}"
                    return kind, detail
        off += p.length
    # a piece the mapping lets through, of which nothing landed
    for p in pcs:
        if p.pool is None or not _overlaps(want, p.pool, p.length) or _overlaps(got, p.pool, p.length):
            continue
        if kept := model.kept_permission(p.iova, "w"):
            m = model.find(p.iova)
            assert m is not None
            where = f"the {m.perm} mapping of op {m.since}"
            return "stale-permission", f"a write to {p.iova:#x}+{p.length} was blocked in {where}, {kept}"
    extra = sorted(set(got) - set(want))
    missing = sorted(set(want) - set(got))
    if extra and not missing:
        o, n = extra[0]
        return "data", f"bytes landed at pool {o:#x}+{n}, where no mapping of this DMA leads"
    if missing and not extra:
        o, n = missing[0]
        return "data", f"nothing landed at pool {o:#x}+{n}, where the mapping leads"
    parts = []
    if extra:
        parts.append(f"unexpected change at pool {extra[0][0]:#x}+{extra[0][1]}")
    if missing:
        parts.append(f"expected change at pool {missing[0][0]:#x}+{missing[0][1]} not seen")
    same = [key for key in want if key in got and want[key] != got[key]]
    if same:
        parts.append(f"wrong data at pool {same[0][0]:#x}+{same[0][1]}")
    return "data", "landed bytes differ from the prediction: " + "; ".join(parts)


def _overlaps(runs: Iterable[tuple[int, int]], start: int, length: int) -> bool:
    return any(o < start + length and start < o + n for o, n in runs)


def check_faults(
    run: Run, faults: Sequence[PredictedFault], events: Sequence[Event], fresh: bool, states: Sequence[str]
) -> Mismatch | None:
    """The device's fault reports against the prediction (see the module).
    `states`: the model's state before each operation."""

    def state(k: int) -> str:
        return states[k] if 0 <= k < len(states) else (states[-1] if states else "")

    mine = [e for e in events if e.kind == "iommu-fault" and e.fields.get("bdf") == run.bdf]
    for e in mine:
        if not any(f.matches(e) for f in faults):
            idx = _op_near(run, e)
            return Mismatch(
                idx,
                "unexpected-fault",
                f"{e.summary()}: no operation of the model faults there",
                state(idx),
            )
    if fresh and faults:
        first = faults[0]
        if not any(first.matches(e) for e in mine):
            return Mismatch(
                first.index,
                "missed-fault",
                f"the {first.describe()} was blocked but not reported (first blocked DMA of the run)",
                state(first.index),
            )
        want = min(RATELIMIT_BURST, len(faults))
        if len(mine) < want:
            return Mismatch(
                -1,
                "missed-fault",
                f"{len(mine)} fault reports from {run.bdf}, at least {want} expected"
                f" ({len(faults)} blocked pieces)",
                state(len(states) - 1),
            )
    return None


def _op_near(run: Run, e: Event) -> int:
    try:
        addr = int(str(e.fields.get("address")), 0)
    except ValueError:
        return -1
    for obs in run.ops:
        if obs.op.kind in ("dw", "dr") and obs.op.iova - 4 <= addr < obs.op.iova + obs.op.length:
            return obs.index
    return -1


def fresh_window(run: Run, earlier: Sequence[Event]) -> bool:
    """True if the fault-report rate limit is sure to be fresh when the run
    began: no report in the interval before it (guest time)."""
    if run.uptime is None:
        return False
    stamps = [e.timestamp for e in earlier if e.kind == "iommu-fault"]
    if any(t is None for t in stamps):
        return False
    return all(t is not None and t < run.uptime - RATELIMIT_INTERVAL_S for t in stamps)


def judge(run: Run, events: Sequence[Event], earlier: Sequence[Event], wo_reads_allowed: bool) -> Verdict:
    """Data, uAPI and fault verdict of one run."""
    if not run.complete:
        v = Verdict(Mismatch(len(run.ops), "incomplete", "the helper did not finish the sequence", ""))
        return v
    v = replay(run, wo_reads_allowed)
    if v.mismatch is not None:
        return v
    # faults from operations after the first mismatch are not judged
    m = check_faults(run, v.faults, events, fresh_window(run, earlier), v.states)
    return Verdict(m, v.faults, v.state, v.model, v.states)


# ---------------------------------------------------------------------------
# shrinking

Oracle = Callable[[Sequence[Op]], Mismatch | None]


def ddmin(
    ops: Sequence[Op], test: Callable[[Sequence[Op]], Sequence[Op] | None], budget: int = 40
) -> list[Op]:
    """Zeller's delta debugging: a 1-minimal subsequence of ops that still
    fails (as far as `budget` tests allow). `test` replays a candidate in
    the guest and returns the sequence that failed (the candidate, or a
    smaller one it derived from it), or None; each call costs a guest run,
    so the budget bounds the minimization's time."""
    seq = list(ops)
    n = 2
    tests = 0
    while len(seq) >= 2 and tests < budget:
        chunk = max(1, len(seq) // n)
        subsets = [seq[i : i + chunk] for i in range(0, len(seq), chunk)]
        reduced = False
        for i in range(len(subsets)):
            complement = [o for j, s in enumerate(subsets) if j != i for o in s]
            if tests >= budget:
                break
            tests += 1
            if complement and (failed := test(complement)) is not None:
                seq, n, reduced = list(failed), max(n - 1, 2), True
                break
        if not reduced:
            if n >= len(seq):
                break
            n = min(len(seq), 2 * n)
    return seq


def prune(ops: Sequence[Op], backend: str, page: int, pool_len: int, wo_reads: bool, cap: int) -> list[Op]:
    """ops without the DMAs the model expects to be blocked for more than
    `cap` bytes (a candidate that lost the mapping a long DMA went through):
    a blocked beat is a fault report each, and such a DMA tells nothing new."""
    model = Model(backend, page, bytes(pool_len), wo_reads)
    out = []
    for k, op in enumerate(ops):
        if op.kind == "map":
            model.map(op, k)
        elif op.kind == "unmap":
            model.unmap(op, k)
        else:
            pcs = model.pieces(op, "w" if op.kind == "dw" else "r")
            if sum(p.length for p in pcs if p.pool is None) > cap:
                continue
        out.append(op)
    return out


def fault_claims(run: Run, faults: Sequence[PredictedFault]) -> list[tuple[str, int, int]]:
    """(bdf, first, last) IOVA ranges whose faults the run explains."""
    return [(run.bdf, f.iova & ~3, f.iova + f.length - 1) for f in faults]
