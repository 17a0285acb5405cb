"""Profiles (data) to QEMU argv (a list)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.config import Registry
from harness.machine.profile import (
    MachineSpec,
    Role,
    kernel_cmdline,
    machine_options,
    qemu_argv,
    reproducer_argv,
)


def spec(profile_name: str) -> MachineSpec:
    profile = Registry().profile(profile_name)
    return MachineSpec(
        profile=profile,
        kernel=Path("/k/Image"),
        initrd=Path("/k/initrd"),
        cmdline=kernel_cmdline(profile),
        serial_socket=Path("/s/serial"),
        qmp_socket=Path("/s/qmp"),
        console_log=Path("/r/console.log"),
        ssh_port=40022,
    )


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_nested_smmu_on_virt_10() -> None:
    argv = qemu_argv(spec("smmuv3-nested"))
    assert opt(argv, "-M") == ["virt,virtualization=on,gic-version=3,iommu=smmuv3"]
    assert "-global" not in argv
    assert "edu,dma_mask=0xffffffffffffffff" in opt(argv, "-device")


def test_stage_1_and_2_use_virt_9_1_and_the_stage_global() -> None:
    for stage in ("1", "2"):
        argv = qemu_argv(spec(f"smmuv3-s{stage}"))
        assert opt(argv, "-M")[0].startswith("virt-9.1,virtualization=on")
        assert opt(argv, "-global") == [f"arm-smmuv3.stage={stage}"]


def test_virtio_iommu_profile_has_no_smmu() -> None:
    argv = qemu_argv(spec("virtio-iommu"))
    assert "iommu=smmuv3" not in opt(argv, "-M")[0]
    assert "virtio-iommu-pci" in opt(argv, "-device")


def test_virtio_iommu_options_are_device_properties() -> None:
    assert "virtio-iommu-pci,granule=64k" in opt(qemu_argv(spec("virtio-iommu-64k")), "-device")
    assert "virtio-iommu-pci,boot-bypass=off" in opt(qemu_argv(spec("virtio-iommu-no-bypass")), "-device")


def test_iommu_mode_profiles_set_the_kernel_cmdline() -> None:
    assert "iommu.strict=0" in opt(qemu_argv(spec("smmuv3-nested-lazy")), "-append")[0].split()
    assert "iommu.passthrough=1" in opt(qemu_argv(spec("smmuv3-nested-passthrough")), "-append")[0].split()


def test_every_virtio_pci_device_is_behind_the_iommu() -> None:
    for name in Registry().profile_names():
        for dev in opt(qemu_argv(spec(name)), "-device"):
            if dev.startswith("virtio-") and dev.split(",")[0] != "virtio-iommu-pci":
                assert "iommu_platform=on" in dev and "disable-legacy=on" in dev, (name, dev)


def test_ports_bind_loopback_only_and_pkvm_cmdline() -> None:
    argv = qemu_argv(spec("smmuv3-nested"))
    (netdev,) = opt(argv, "-netdev")
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in netdev
    (append,) = opt(argv, "-append")
    assert "kvm-arm.mode=protected" in append and "panic=-1" in append
    assert "-no-reboot" in argv and "-S" in argv
    assert "logfile=/r/console.log" in opt(argv, "-chardev")[0]


def test_reproducer_runs_unpaused_on_stdio() -> None:
    argv = reproducer_argv(spec("smmuv3-nested"))
    assert "-S" not in argv and opt(argv, "-serial") == ["mon:stdio"] and "-qmp" not in argv


def test_no_pkvm_profile_cmdline() -> None:
    from dataclasses import replace

    profile = replace(Registry().profile("no-iommu"), kvm_mode="default")
    assert not any(a.startswith("kvm-arm.mode=") for a in kernel_cmdline(profile))


def test_nvhe_profile_is_smmuv3_nested_without_pkvm() -> None:
    from dataclasses import replace

    nested, nvhe = Registry().profile("smmuv3-nested"), Registry().profile("smmuv3-nested-nvhe")
    assert nvhe.kvm_mode == "nvhe" and not nvhe.pkvm and "pkvm" not in nvhe.features
    append = kernel_cmdline(nvhe)
    assert "kvm-arm.mode=nvhe" in append and "kvm-arm.mode=protected" not in append
    # The same machine otherwise: only the mode differs.
    assert (
        replace(
            nvhe,
            name=nested.name,
            description=nested.description,
            features=nested.features,
            kvm_mode="protected",
            expect=nested.expect,
            path=nested.path,
        )
        == nested
    )


def test_the_argv_is_the_machines_options_as_data() -> None:
    """qemu_argv and the reproducer are `machine_options` flattened (plus
    the harness's console and QMP): one description, which the LAVA
    exporter reads by role instead of parsing an argv back."""
    s = replace(spec("virtio-iommu"), scratch_disk=Path("/s/scratch.img"))
    options = machine_options(s)
    flat = [arg for o in options for arg in o.argv()]
    assert qemu_argv(s)[1 : 1 + len(flat)] == flat
    assert reproducer_argv(s) == [s.qemu_binary, *flat, "-serial", "mon:stdio"]
    roles = {o.role: o for o in options if o.role != Role.OTHER and o.role != Role.BOOT}
    assert roles[Role.MACHINE].value == "virt,virtualization=on,gic-version=3"
    assert roles[Role.MEMORY].value == str(s.profile.memory_mb)
    assert roles[Role.SCRATCH].value == "file=/s/scratch.img,if=none,id=scratch,format=raw"
    assert [o.flag for o in options if o.role == Role.BOOT] == ["-kernel", "-initrd", "-append"]
    (net,) = [o for o in options if o.flag == "-netdev"]
    assert net.argv() == ["-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"]
    assert net.without_host_port() == "-netdev user,id=net0"


def test_a_profiles_extra_args_become_options_token_for_token() -> None:
    """extra_args (argv tokens in the profile's YAML) are grouped into
    options, a user netdev's hostfwd kept apart; the argv keeps every token."""
    tokens = ("-S", "-netdev", "user,id=n1,hostfwd=tcp::5555-:22,ipv6=off", "-device", "edu", "-x", "-y")
    s = replace(spec("smmuv3-nested"), profile=replace(spec("smmuv3-nested").profile, extra_args=tokens))
    options = machine_options(s)
    assert [a for o in options for a in o.argv()][-len(tokens) :] == list(tokens)
    extra = options[-5:]
    assert [o.without_host_port() for o in extra] == ["-S", "-netdev user,id=n1", "-device edu", "-x", "-y"]
    assert extra[1].host_forward == "tcp::5555-:22,ipv6=off"
