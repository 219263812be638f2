# shellcheck shell=bash
# vfio-intx-split-noir: as vfio-intx-split without interrupt remapping: the VMM's IOAPIC pin
# sends a compatibility-format message with the level-trigger bit, so KVM exits on the guest's
# LAPIC EOI of its vector (KVM_EXIT_IOAPIC_EOI) unless the guest EOIs the IOAPIC directly;
# either EOI lowers the line and unmasks INTx in VFIO (counted).
VFIO="vfio0=16M"
VFIO_MODULES=container
CMDLINE="intel_iommu=on,sm_off iommu.strict=1 pci=nomsi"
ARGS=(--cmdline "$CMDLINE" --irqchip split --iommu intel,caching-mode=on,intremap=off
    --device path=@vfio0,iommu=on,backend=container)
QEMU_ARGS=(-accel kvm -M q35,kernel-irqchip=split -cpu host -m 512M -append "$CMDLINE"
    -device intel-iommu,intremap=off,caching-mode=on "${QEMU_VFIO0_CONTAINER[@]}")

guest() {
    cat <<'GUEST'
assigned_nvme_check vfio0 "assigned NVMe over INTx, split irqchip" DMA
intx_check "$(pci_of "$(nvme_dev 0)")" IO-APIC
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches vfio0 &&
        { [ "$INNER" = qemu ] ||
            { counter_is vfio0_intx_unmasks -gt 0 && counter_is exits_ioapic_eoi -gt 0; }; }
}
