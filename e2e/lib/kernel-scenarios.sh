# shellcheck shell=bash
# e2e/lib/kernel-scenarios.sh: the kernel axis of the suite. Each e2e/scenarios/kernel-<tag>-<path>.sh
# sets GUEST_KERNEL (a tag of e2e/prepare's GUEST_KERNELS: 5.10, 6.1, newest) and calls one of
# the functions below, which define the scenario as sm-strict (emulated) or assigned (assigned)
# do for the default 6.12 guest, plus a check that the guest ran the kernel it was given.
#
#   kernel_emulated_scenario   one emulated virtio-blk disk behind the vIOMMU, no caching mode
#   kernel_assigned_scenario   one disk assigned through the software host IOMMU (caching mode)
#   kernel_intremap_scenario   intremap's setup: interrupt remapping in x2APIC mode, 2 vCPUs,
#                              an emulated disk's MSI-X and COM1 remapped

# What every kernel-* guest runs before its path's checks: the kernel release for the host-side
# check, DMAR up, the device in an IOMMU group with a strict DMA domain.
kernel_guest_common() {
    cat <<'GUEST'
echo "GUEST-KERNEL $(uname -r)"
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
dmesg_has 'Adding to iommu group' "devices join IOMMU groups"
dev=$(disk_dev 0)
pci=$(pci_of "$dev")
expect_domain_type "$pci" DMA
GUEST
}

kernel_emulated_scenario() {
    DISKS="d0=16M"
    CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
    ARGS=(--cmdline "$CMDLINE" --iommu intel,x-scalable-mode=on,x-flts=on --disk path=@d0,iommu=on)
    QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE" -device "$QEMU_SM_IOMMU" "${QEMU_DISK_D0[@]}")
    QEMU_SKIPS="the VMM's counters"
    guest() {
        kernel_guest_common
        echo 'data_check d0 "$dev" "emulated disk on guest kernel $(uname -r)"'
    }
    check() {
        guest_ran "$1" && guest_kernel_is "$GUEST_KERNEL" && disk_hash_matches d0 &&
            { [ "$INNER" = qemu ] || counter_is translations -gt 0; }
    }
}

# Device assignment needs caching-mode=on (see assigned.sh).
kernel_assigned_scenario() {
    DISKS="d1=16M"
    CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
    ARGS=(--cmdline "$CMDLINE" --iommu intel,x-scalable-mode=on,x-flts=on,caching-mode=on
        --disk path=@d1,assigned=sim)
    QEMU_ARGS=()
    guest() {
        kernel_guest_common
        echo 'data_check d1 "$dev" "assigned disk on guest kernel $(uname -r)"'
    }
    check() {
        guest_ran "$1" && guest_kernel_is "$GUEST_KERNEL" && disk_hash_matches d1 &&
            counter_is accel_nested_binds -gt 0 &&
            counter_is accel_forwarded_invalidations -gt 0 &&
            counter_is translations -eq 0
    }
}

# Interrupt remapping (see intremap.sh): each kernel must take the remapping path in x2APIC mode
# (Linux consults KVM's extended-destination CPUID bit only without remapping), route COM1
# through a remapped IO-APIC pin and the disk through remapped MSI-X.
kernel_intremap_scenario() {
    DISKS="d0=16M"
    CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
    ARGS=(--cmdline "$CMDLINE" --cpus 2
        --iommu intel,x-scalable-mode=on,x-flts=on,intremap=on,eim=on --disk path=@d0,iommu=on)
    QEMU_ARGS=()
    guest() {
        kernel_guest_common
        cat <<'GUEST'
dmesg_has 'DMAR-IR: Enabled IRQ remapping in x2apic mode' "interrupt remapping in x2APIC mode"
grep -Eq 'IR-IO-APIC +4-edge +ttyS0' /proc/interrupts && ok "ttyS0 is a remapped IO-APIC pin" ||
    fail "ttyS0 is not a remapped IO-APIC pin: $(grep ttyS0 /proc/interrupts | tr -s ' ')"
data_check d0 "$dev" "emulated disk, remapped MSI-X, guest kernel $(uname -r)"
n=$(remapped_requests "$pci")
[ "$n" -gt 0 ] && ok "$n request interrupts through remapped MSI-X" ||
    fail "no request interrupt through remapped MSI-X: $(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' '|')"
GUEST
    }
    check() {
        guest_ran "$1" && guest_kernel_is "$GUEST_KERNEL" && disk_hash_matches d0 &&
            counter_is interrupts_remapped -gt 0 && counter_is interrupt_faults -eq 0
    }
}
