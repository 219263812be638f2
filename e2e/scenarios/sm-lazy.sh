# shellcheck shell=bash
# sm-lazy: as sm-strict with iommu.strict=0: the device's domain is DMA-FQ (lazy invalidation).
DISKS="d0=16M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=0"
ARGS=(--cmdline "$CMDLINE" --iommu intel,x-scalable-mode=on,x-flts=on --disk path=@d0,iommu=on)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE" -device "$QEMU_SM_IOMMU" "${QEMU_DISK_D0[@]}")
QEMU_SKIPS="cap/ecap against the VMM's VTD line"

guest() {
    cat <<'GUEST'
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
dmesg_has 'Adding to iommu group' "devices join IOMMU groups"
report_cap
dev=$(disk_dev 0)
pci=$(pci_of "$dev")
expect_domain_type "$pci" DMA-FQ
data_check d0 "$dev" "lazy DMA-FQ domain"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d0 && { [ "$INNER" = qemu ] || cap_matches; }
}
