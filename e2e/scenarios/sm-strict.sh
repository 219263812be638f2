# shellcheck shell=bash
# sm-strict: scalable mode, first-stage translation, strict invalidation; one emulated
# virtio-blk disk behind the vIOMMU. DMAR comes up, the device joins a group with a strict DMA
# domain, the guest sees the CAP/ECAP the VMM reports, and data written with direct I/O reads
# back identical and lands on the host image unchanged.
DISKS="d0=16M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
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
expect_domain_type "$pci" DMA
data_check d0 "$dev" "strict DMA domain"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d0 && { [ "$INNER" = qemu ] || cap_matches; }
}
