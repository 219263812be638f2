# shellcheck shell=bash
# vfio-intx: a real device (L1's emulated NVMe bound to vfio-pci, the VFIO container) behind
# the vIOMMU on the in-kernel irqchip, the guest booted with pci=nomsi so its NVMe driver uses
# INTx: the DSDT's _PRT routes the function's INTA to an IOAPIC pin, VFIO's trigger eventfd is
# a resampling KVM irqfd and the resample eventfd VFIO's unmask eventfd. Its direct I/O over
# the whole disk leaves the data intact.
VFIO="vfio0=16M"
VFIO_MODULES=container
CMDLINE="intel_iommu=on,sm_off iommu.strict=1 pci=nomsi"
ARGS=(--cmdline "$CMDLINE" --iommu intel,caching-mode=on --device path=@vfio0,iommu=on,backend=container)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE" -device intel-iommu,caching-mode=on
    "${QEMU_VFIO0_CONTAINER[@]}")

guest() {
    cat <<'GUEST'
assigned_nvme_check vfio0 "assigned NVMe over INTx, in-kernel irqchip" DMA
intx_check "$(pci_of "$(nvme_dev 0)")" IO-APIC
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches vfio0
}
