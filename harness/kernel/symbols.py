"""Addresses to `function+0xoff/0xsize`, from the build's System.map.

The kernel prints hyp BUG/panic addresses and EL1 frames as vmlinux
addresses (the minimal configs have no KASLR), and QEMU reports vCPU PCs in
the same space, so one sorted table names them all. Hyp symbols carry the
`__kvm_nvhe_` prefix in System.map; it is kept, since it says "EL2".

A vCPU that runs the nVHE/hVHE hypervisor reports a hyp VA instead, which
System.map does not know: `hyp_image_address` maps it back to the kernel
image from the layout (see there)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

_TEXT_TYPES = set("tTwW")

HYP_PREFIX = "__kvm_nvhe_"
# The hypervisor's code in the kernel image: its idmap page (run at VA == PA
# while EL2's MMU is switched) and its text (run at hyp VAs).
HYP_TEXT = (("__hyp_idmap_text_start", "__hyp_idmap_text_end"), ("__hyp_text_start", "__hyp_text_end"))
# The boot protocol's alignment of the kernel image in physical memory
# (Documentation/arch/arm64/booting.rst: "placed text_offset bytes from a
# 2MB aligned base address", text_offset 0), which KIMAGE_VADDR shares.
IMAGE_ALIGN = 2 << 20


def is_kernel_va(address: int) -> bool:
    """Kernel (TTBR1) addresses have the top bit set; a hyp VA, a PA and a
    user address do not."""
    return bool(address >> 63)


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

    @cached_property
    def _by_name(self) -> dict[str, int]:
        return {name: address for address, name in zip(self.addresses, self.names, strict=True)}

    def address(self, name: str) -> int | None:
        return self._by_name.get(name)

    @cached_property
    def hyp_text(self) -> tuple[tuple[int, int], ...]:
        """The kernel-image ranges of the hypervisor's code."""
        ranges = []
        for first, last in HYP_TEXT:
            start, end = self.address(first), self.address(last)
            if start is not None and end is not None and start < end:
                ranges.append((start, end))
        return tuple(ranges)

    def hyp_image_address(self, hyp_va: int) -> int | None:
        """The kernel-image address of the hyp code an EL2 PC points at,
        from the layout alone; None when not exactly one address fits.

        kvm_compute_layout() (arch/arm64/kvm/va_layout.c) makes a hyp VA
        `tag | (linear-map VA & va_mask)`, with va_mask = bits tag_lsb-1..0
        and tag_lsb above the span of RAM (at least 2 MiB), so the hyp VA
        keeps the linear-map VA's low bits. The linear-map VA is
        `PA - memstart_addr + PAGE_OFFSET`, both of them 2 MiB aligned (or
        more), and the image address is `PA + kimage_voffset`, whose parts
        (KIMAGE_VADDR and the image's load address) are 2 MiB aligned: all
        of them agree modulo 2 MiB, and so does a PC in the idmap page (VA
        == PA). The hypervisor's code (about 100 KiB) lies within a range
        shorter than 2 MiB, so at most one address of it has the PC's
        residue. (With RANDOMIZE_BASE the tag has random bits, above
        tag_lsb: no matter. KASLR moves the image itself: System.map is
        then wrong for every address, not only these.)"""
        residue = hyp_va % IMAGE_ALIGN
        found = set()
        for start, end in self.hyp_text:
            candidate = start - start % IMAGE_ALIGN + residue
            while candidate < end:
                if candidate >= start:
                    found.add(candidate)
                candidate += IMAGE_ALIGN
        return found.pop() if len(found) == 1 else None

    def function(self, address: int) -> str | None:
        sym = self.lookup(address)
        return sym.split("+")[0] if sym else None
