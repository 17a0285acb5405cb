"""Capability claims and the probe's raw answers, carried as tokens among
the capabilities (see capabilities.py): `expect:<token>=<why>` and
`answer:<key>=<value>`. Apart from the probe so that the runner can apply
the same rule to a step's `requires:`."""

from __future__ import annotations

from collections.abc import Collection, Iterable

EXPECT = "expect:"
ANSWER = "answer:"


def _pairs(caps: Iterable[str], prefix: str) -> dict[str, str]:
    pairs = (c.removeprefix(prefix).split("=", 1) for c in caps if c.startswith(prefix))
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


def _explain(token: str, answers: dict[str, str]) -> str:
    """Why the probe did not find `token`, in the probe's own words."""
    if token == "protected-vm":
        if "protected_vm_error" in answers:
            return f"KVM_CREATE_VM(type=PROTECTED) failed: {answers['protected_vm_error']}"
        if "pkvm_vmm_bail" in answers:
            return f"pkvm-vmm probe bailed out: {answers['pkvm_vmm_bail']}"
        if "pkvm_vmm_probe_status" in answers:
            return f"pkvm-vmm probe exited {answers['pkvm_vmm_probe_status']} without saying why"
        return "pkvm-vmm probe did not run"
    if token == "pkvm-guest-hypercalls":
        if "pkvm_hypercalls_error" in answers:
            return f"a protected VM could not ask for them: {answers['pkvm_hypercalls_error']}"
        if "protected_vm_error" in answers:
            return "no protected VM could be created to ask for them"
        return "a protected VM was not offered the vendor-hyp functions 2, 3 and 4"
    if token == "pkvm-protected-mode":
        return "the boot log has no 'Protected [nh]VHE mode initialized successfully'"
    if token == "kvm":
        return "the guest has no /dev/kvm"
    if token == "pkvm-ownership-selftest":
        return "the build's System.map has no __kvm_nvhe_pkvm_ownership_selftest: it is not built in"
    return "the probe did not find it"


def lost_capabilities(caps: frozenset[str], among: Collection[str] | None = None) -> list[str]:
    """Each capability claimed (`expect:`) but not found (only those in
    `among`, if given): `<token> expected (<why>) but <the probe's answer>`."""
    answers = _pairs(caps, ANSWER)
    return [
        f"{token} expected ({why}) but {_explain(token, answers)}"
        for token, why in sorted(_pairs(caps, EXPECT).items())
        if token not in caps and (among is None or token in among)
    ]
