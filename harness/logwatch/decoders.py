"""Field decoders for signatures whose meaning spans lines or bitfields."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Fields = dict[str, str | int | bool]

_DWORD = re.compile(r":\s+0x(?P<dw>[0-9a-f]{16})\s*$")
_SMMU_DECODED = re.compile(
    r"event: (?P<name>\S+) client: (?P<client>\S+) sid: (?P<sid>0x[0-9a-f]+)"
    r" ssid: (?P<ssid>0x[0-9a-f]+) iova: (?P<iova>0x[0-9a-f]+)"
)
# arm-smmu-v3.h feature bits (ARM_SMMU_FEAT_*).
_FEAT_TRANS_S1 = 1 << 9
_FEAT_TRANS_S2 = 1 << 10
_FEAT_NESTING = 1 << 19
_EVT_RNW_BIT = 35  # EVTQ_1_RnW
_EVT_S2_BIT = 39  # EVTQ_1_S2: the fault arose in stage 2 (the SMMU's own record)


def smmu_event(fields: Fields, trace: list[str]) -> None:
    """6.12 prints only the raw event record: dword0[63:32] is the StreamID,
    dword2 the input address. 7.3 adds a decoded line, preferred when there."""
    dwords = [int(m.group("dw"), 16) for line in trace if (m := _DWORD.search(line))]
    if len(dwords) >= 3:
        fields["sid"] = hex(dwords[0] >> 32)
        fields["address"] = hex(dwords[2])
        # Translation, address-size, access and permission faults: RnW is
        # dword1 bit 35 (6.12 prints no decoded line to read it from).
        if 0x10 <= int(str(fields["id"]), 16) <= 0x13:
            fields["access"] = "read" if dwords[1] >> _EVT_RNW_BIT & 1 else "write"
            fields["stage"] = "s2" if dwords[1] >> _EVT_S2_BIT & 1 else "s1"
    for line in trace:
        if m := _SMMU_DECODED.search(line):
            fields.update(
                name=m["name"],
                client=m["client"],
                sid=hex(int(m["sid"], 16)),
                ssid=m["ssid"],
                address=hex(int(m["iova"], 16)),
            )
        if m := _SMMU_ACCESS.search(line):
            fields["access"] = m["access"]
            if m["stage"]:
                fields["stage"] = m["stage"]
    fields["id"] = hex(int(str(fields["id"]), 16))
    fields.setdefault("name", _SMMU_EVENT_NAMES.get(int(str(fields["id"]), 16), str(fields["id"])))
    client = fields.get("client")
    if isinstance(client, str) and client.count(":") == 2:
        fields["bdf"] = client
    elif "sid" in fields:
        fields["bdf"] = requester_bdf(int(str(fields["sid"]), 16))


def requester_bdf(rid: int, segment: int = 0) -> str:
    """A PCI requester ID as a BDF. On QEMU's virt machine the SMMU StreamID
    and the virtio-iommu endpoint ID of a PCI device are both its RID."""
    return f"{segment:04x}:{rid >> 8:02x}:{(rid >> 3) & 0x1F:02x}.{rid & 7}"


_SMMU_ACCESS = re.compile(r"\b(?:un)?priv (?:data|inst) (?P<access>read|write)(?: (?P<stage>s[12])\b)?")
_SMMU_EVENT_NAMES = {0x10: "F_TRANSLATION", 0x11: "F_ADDR_SIZE", 0x12: "F_ACCESS", 0x13: "F_PERMISSION"}


def virtio_iommu_fault(fields: Fields, trace: list[str]) -> None:
    fields["bdf"] = requester_bdf(int(str(fields["endpoint"])))
    flags = str(fields.get("flags", ""))
    # virtio-iommu reports the access that faulted: R, W, X flags.
    fields["access"] = {"R": "read", "W": "write"}.get(flags, flags or "unknown")


def smmu_features(fields: Fields, trace: list[str]) -> None:
    feats = int(str(fields["features"]), 16)
    fields["stage1"] = bool(feats & _FEAT_TRANS_S1)
    fields["stage2"] = bool(feats & _FEAT_TRANS_S2)
    fields["nesting"] = bool(feats & _FEAT_NESTING)


def hyp_symbol(fields: Fields, trace: list[str]) -> None:
    """`__kvm_nvhe_handle_trap+0x54/0x124` -> function `handle_trap`."""
    sym = fields.get("symbol")
    if isinstance(sym, str):
        fields["function"] = sym.split("+")[0].removeprefix("__kvm_nvhe_")


DECODERS: dict[str, Callable[[Fields, list[str]], None]] = {
    "smmu_event": smmu_event,
    "smmu_features": smmu_features,
    "hyp_symbol": hyp_symbol,
    "virtio_iommu_fault": virtio_iommu_fault,
}


def describe_fault(fields: Mapping[str, object], signature: str, drivers: Mapping[str, str]) -> str:
    """`SMMUv3 event 0x13 F_PERMISSION (write) from 0000:00:01.0 (virtio-pci)
    at 0xfff78b88`: the device (with its driver, when known), the kind of
    fault and the address, from an IOMMU-fault event's decoded fields."""
    bdf = str(fields.get("bdf", "an unknown device"))
    driver = drivers.get(bdf) or "driver unknown"
    if signature == "smmuv3-event":
        kind = f"SMMUv3 event {fields.get('id')} {fields.get('name', '')}".rstrip()
    else:
        kind = "virtio-iommu page fault"
    access = fields.get("access")
    detail = f" ({access})" if access not in (None, "unknown") else ""
    return f"{kind}{detail} from {bdf} ({driver}) at {fields.get('address', '?')}"
