# shellcheck shell=bash
# vfio-intx-split: as vfio-intx on the split irqchip with interrupt remapping: the function's
# INTx raises a pin of the VMM's IOAPIC, whose remappable-format entry goes through the
# guest's IRTE; the guest's EOI of that level pin (Linux writes the IOAPIC's EOI register:
# its IRTEs are edge-triggered, so the LAPIC broadcasts no EOI) lowers the line and unmasks
# INTx in VFIO (counted), and a line still asserted is delivered again.
VFIO="vfio0=16M"
VFIO_MODULES=container
CMDLINE="intel_iommu=on,sm_off iommu.strict=1 pci=nomsi"
ARGS=(--cmdline "$CMDLINE" --irqchip split --iommu intel,caching-mode=on,intremap=on
    --device path=@vfio0,iommu=on,backend=container)
QEMU_ARGS=(-accel kvm -M q35,kernel-irqchip=split -cpu host -m 512M -append "$CMDLINE"
    -device intel-iommu,intremap=on,caching-mode=on "${QEMU_VFIO0_CONTAINER[@]}")

guest() {
    cat <<'GUEST'
dmesg_has 'DMAR-IR: Enabled IRQ remapping' "interrupt remapping"
assigned_nvme_check vfio0 "assigned NVMe over INTx, split irqchip, remapped" DMA
intx_check "$(pci_of "$(nvme_dev 0)")" IR-IO-APIC
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches vfio0 && { [ "$INNER" = qemu ] ||
        { counter_is vfio0_intx_unmasks -gt 0 && counter_is interrupts_remapped -gt 0 &&
            counter_is interrupt_faults -eq 0; }; }
}
