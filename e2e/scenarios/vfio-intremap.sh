# shellcheck shell=bash
# vfio-intremap: a real device (L1's emulated NVMe bound to vfio-pci, the VFIO container) behind
# the vIOMMU with interrupt remapping in x2APIC mode on the split irqchip, two vCPUs: the NVMe
# driver's MSI-X vectors (VFIO eventfds as KVM irqfds) are remapped through the guest's IRTEs,
# show as IR-PCI-MSIX, and its direct I/O over the whole disk leaves the data intact.
VFIO="vfio0=16M"
VFIO_MODULES=container
CMDLINE="intel_iommu=on,sm_off iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --cpus 2 --iommu intel,caching-mode=on,intremap=on,eim=on
    --device path=@vfio0,iommu=on,backend=container)
QEMU_ARGS=(-accel kvm -M q35,kernel-irqchip=split -cpu host -m 512M -smp 2 -append "$CMDLINE"
    -device intel-iommu,intremap=on,eim=on,caching-mode=on "${QEMU_VFIO0_CONTAINER[@]}")

guest() {
    cat <<'GUEST'
dmesg_has 'DMAR-IR: Enabled IRQ remapping in x2apic mode' "interrupt remapping in x2APIC mode"
assigned_nvme_check vfio0 "assigned NVMe, remapped interrupts" DMA
pci=$(pci_of "$(nvme_dev 0)")
n=$(awk -v dev="IR-PCI-MSIX-$pci" '$0 ~ dev && /nvme0q[1-9]/ {
    for (c = 2; c <= NF && $c ~ /^[0-9]+$/; c++) sum += $c } END { print sum + 0 }' /proc/interrupts)
if [ "$n" -gt 0 ]; then
    ok "$n NVMe I/O queue interrupts through IR-PCI-MSIX"
else
    fail "no NVMe I/O queue interrupt through IR-PCI-MSIX: $(grep nvme /proc/interrupts | tr -s ' ' | tr '\n' '|')"
fi
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches vfio0 && { [ "$INNER" = qemu ] ||
        { counter_is interrupts_remapped -gt 0 && counter_is interrupt_faults -eq 0; }; }
}
