"""Turns a console stream into Events. It is fed incrementally (any chunking,
\\r\\n or \\n) and keeps several events open at once: a hyp panic's trace
includes the kernel panic that follows it, which is an event of its own."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.logwatch.decoders import DECODERS
from harness.logwatch.signatures import SIGNATURES, Signature

# Optional printk timestamp and a leading "<level>" that some consoles keep.
_PREFIX = re.compile(r"^(?:<\d+>)?(?:\[\s*(?P<ts>\d+\.\d+)\]\s?)?")
# On a shared serial console a kernel record can start in the middle of a
# line a program was printing; with printk timestamps on, that is where a
# new record begins.
_RECORD_START = re.compile(r"(?<=\S)(?=\[\s*\d+\.\d{6}\] )")


@dataclass
class Event:
    signature: str
    kind: str
    severity: str
    fatal: bool
    line: int  # 1-based line number in the console log
    timestamp: float | None
    message: str
    fields: dict[str, str | int | bool] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)
    # The trace with kernel addresses named from the build's System.map,
    # when the log itself lacks the names (no kallsyms, hyp addresses).
    symbolised: list[str] = field(default_factory=list)
    # False while more lines of this message may still come (its fields can
    # still change): reasons built from an event prefer complete ones.
    complete: bool = True

    def summary(self) -> str:
        detail = ", ".join(f"{k}={v}" for k, v in self.fields.items() if k != "features")
        return f"{self.signature}: {self.message}" + (f" [{detail}]" if detail else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "signature": self.signature,
            "kind": self.kind,
            "severity": self.severity,
            "fatal": self.fatal,
            "line": self.line,
            "timestamp": self.timestamp,
            "message": self.message,
            "fields": self.fields,
            "trace": self.trace,
            **({"symbolised": self.symbolised} if self.symbolised else {}),
        }


@dataclass
class _Open:
    sig: Signature
    event: Event


Symbolize = Callable[[int], str | None]

# A kernel virtual address as printed in traces and BUG lines.
_KADDR = re.compile(r"(?<![0-9a-fx])(?:0x)?(ffff[0-9a-f]{12})(?![0-9a-f])")
_HYP_OFFSET = re.compile(r"Hyp Offset: (0x[0-9a-f]+)")
_HYP_PC = re.compile(r"\bPC:([0-9a-f]{16})\b")
_SYMBOLISED_KINDS = {"hyp", "panic", "oops", "bug", "warning", "lockup", "rcu", "kasan"}


def symbolise_trace(trace: list[str], symbolize: Symbolize) -> list[str]:
    """Each kernel address gets its `function+off/size`. A hyp panic's
    `PC:` is a hyp VA: adding the `Hyp Offset` it prints gives the vmlinux
    address (see nvhe_hyp_panic_handler)."""
    offset = next((int(m[1], 16) for line in trace if (m := _HYP_OFFSET.search(line))), None)

    def name(addr: int, text: str) -> str:
        sym = symbolize(addr)
        return f"{text} ({sym})" if sym else text

    out = []
    for line in trace:
        new = _KADDR.sub(lambda m: name(int(m[1], 16), m[0]), line)
        if offset is not None:
            new = _HYP_PC.sub(lambda m: name((int(m[1], 16) + offset) % (1 << 64), m[0]), new)
        out.append(new)
    return out


class LogWatcher:
    def __init__(
        self, signatures: Iterable[Signature] = SIGNATURES, symbolize: Symbolize | None = None
    ) -> None:
        self.signatures = tuple(signatures)
        self.symbolize = symbolize
        self.events: list[Event] = []
        self.lines_seen = 0
        self.chars_seen = 0  # any output at all is a sign of life
        self._partial = ""
        self._open: list[_Open] = []

    # pexpect's logfile_read protocol, so the watcher can sit on a session.
    def write(self, chunk: str) -> None:
        self.feed(chunk)

    def flush(self) -> None:
        pass

    def feed(self, chunk: str) -> None:
        self.chars_seen += len(chunk)
        data = self._partial + chunk.replace("\r", "")
        *complete, self._partial = data.split("\n")
        for line in complete:
            self.lines_seen += 1
            for record in _RECORD_START.split(line):
                self._record(record)

    def finish(self) -> None:
        """End of stream: flush a partial line and close open events."""
        if self._partial:
            self.feed("\n")
        for o in self._open:
            self._close(o)
        self._open.clear()

    @property
    def fatal(self) -> Event | None:
        return next((e for e in self.events if e.fatal), None)

    def since(self, line: int) -> list[Event]:
        return [e for e in self.events if e.line > line]

    def _record(self, raw: str) -> None:
        m = _PREFIX.match(raw)
        text = raw[m.end() :] if m else raw
        ts = float(m["ts"]) if m and m["ts"] else None
        if not text.strip():
            return  # blank lines (e.g. the tail of an interrupted line) end nothing
        still_open = []
        for o in self._open:
            sig = o.sig
            if ts is None and o.event.timestamp is not None:
                # Untimestamped text amid timestamped records is a program's
                # output on the shared console: not part of the kernel message.
                still_open.append(o)
                continue
            if sig.more is None or (sig.more.pattern and not sig.more.search(text)):
                self._close(o)
                continue
            o.event.trace.append(raw)
            self._decode(sig, o.event)  # decoders are idempotent: fields are current while open
            if (sig.end is not None and sig.end.search(text)) or len(o.event.trace) >= sig.max_lines:
                self._close(o)
            else:
                still_open.append(o)
        self._open = still_open
        for sig in self.signatures:
            sm = sig.start.search(text)
            if sm is None:
                continue
            event = Event(
                signature=sig.name,
                kind=sig.kind,
                severity=sig.severity,
                fatal=sig.fatal,
                line=self.lines_seen,
                timestamp=ts,
                message=text.strip(),
                fields={k: v for k, v in sm.groupdict().items() if v is not None},
                trace=[raw],
            )
            self.events.append(event)
            self._decode(sig, event)
            if sig.more is not None and sig.max_lines > 1:
                event.complete = False
                self._open.append(_Open(sig, event))
            break

    def _close(self, o: _Open) -> None:
        o.event.complete = True
        self._decode(o.sig, o.event)

    def _decode(self, sig: Signature, event: Event) -> None:
        if sig.decoder:
            DECODERS[sig.decoder](event.fields, event.trace)
        if self.symbolize is None or sig.kind not in _SYMBOLISED_KINDS:
            return
        # `nVHE hyp BUG at: ffff8000804f5b40!` carries only an address: name it.
        for key in ("location", "address"):
            value = event.fields.get(key)
            if isinstance(value, str) and "symbol" not in event.fields and (m := _KADDR.fullmatch(value)):
                sym = self.symbolize(int(m[1], 16))
                if sym:
                    event.fields["symbol"] = sym
                    event.fields["function"] = sym.split("+")[0].removeprefix("__kvm_nvhe_")
        symbolised = symbolise_trace(event.trace, self.symbolize)
        event.symbolised = symbolised if symbolised != event.trace else []


def parse_log(text: str) -> list[Event]:
    watcher = LogWatcher()
    watcher.feed(text)
    watcher.finish()
    return watcher.events
