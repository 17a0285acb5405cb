"""Addresses to `function+0xoff/0xsize`, from the build's System.map.

The kernel prints hyp BUG/panic addresses and EL1 frames as vmlinux
addresses (the minimal configs have no KASLR), and QEMU reports vCPU PCs in
the same space, so one sorted table names them all. Hyp symbols carry the
`__kvm_nvhe_` prefix in System.map; it is kept, since it says "EL2"."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

_TEXT_TYPES = set("tTwW")


@dataclass(frozen=True)
class SymbolTable:
    addresses: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_system_map(cls, path: Path) -> SymbolTable:
        rows: list[tuple[int, str]] = []
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return cls((), ())
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in _TEXT_TYPES:
                try:
                    rows.append((int(parts[0], 16), parts[2]))
                except ValueError:
                    continue
        rows.sort()
        return cls(tuple(a for a, _ in rows), tuple(n for _, n in rows))

    def lookup(self, address: int) -> str | None:
        """`name+0xoff/0xsize`, or None outside the kernel's text."""
        i = bisect.bisect_right(self.addresses, address) - 1
        if i < 0 or i + 1 >= len(self.addresses):
            return None  # below the first symbol, or past _etext's neighbour
        start, end = self.addresses[i], self.addresses[i + 1]
        if end - start > 1 << 24:  # a gap, not a function
            return None
        return f"{self.names[i]}+{address - start:#x}/{end - start:#x}"

    def function(self, address: int) -> str | None:
        sym = self.lookup(address)
        return sym.split("+")[0] if sym else None
