# shellcheck shell=bash
# vfio-rebind: the real device (emulated NVMe in L1, vfio-pci, iommufd) behind a legacy-mode
# vIOMMU with caching-mode=on, while the guest unbinds its NVMe driver and rebinds it with the
# group switched DMA -> identity -> DMA. Each switch changes the device's context entry: the
# VMM's shadow must drop the old domain's mappings, map all of guest RAM for the identity domain
# and replay the new DMA domain's tables, with the data intact after every step.
VFIO="vfio0=16M"
VFIO_MODULES=iommufd
CMDLINE="intel_iommu=on iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --iommu intel,caching-mode=on
    --device path=@vfio0,iommu=on,backend=iommufd)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE"
    -device intel-iommu,intremap=on,caching-mode=on "${QEMU_VFIO0_IOMMUFD[@]}")
QEMU_SKIPS="the VMM's counters"

guest() {
    cat <<'GUEST'
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
assigned_nvme_check vfio0 "assigned NVMe in its boot-time DMA domain" DMA
pci=$(pci_of "$(nvme_dev 0)")
rebind_with_type "$pci" identity
data_check vfio0 "$(block_of "$pci")" "after rebinding in an identity domain"
rebind_with_type "$pci" DMA
data_check vfio0 "$(block_of "$pci")" "after rebinding in a DMA domain again"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches vfio0 || return 1
    [ "$INNER" = qemu ] && return 0
    counter_is vfio0_dma_path_shadow -eq 1 && counter_is shadow_domain_switches -ge 2 &&
        counter_is shadow_failures -eq 0 && counter_is shadow_outside_ram -eq 0
}
