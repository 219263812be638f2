# shellcheck shell=bash
# assigned: a disk assigned through the (software) host IOMMU: its DMA is translated by the
# host's nested page table, never by the vIOMMU. Same data checks; the VMM's exit summary must
# show nested binds and forwarded invalidations, and no vIOMMU translation (it is the only
# device behind the vIOMMU). Device assignment needs caching-mode=on: without it Linux does not
# invalidate the PASID cache when it installs a PASID entry, so the binding would never be seen.
DISKS="d1=16M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --iommu intel,x-scalable-mode=on,x-flts=on,caching-mode=on --disk path=@d1,assigned=sim)
QEMU_ARGS=()

guest() {
    cat <<'GUEST'
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
dmesg_has 'Adding to iommu group' "devices join IOMMU groups"
dev=$(disk_dev 0)
pci=$(pci_of "$dev")
expect_domain_type "$pci" DMA
data_check d1 "$dev" "assigned disk in a strict DMA domain"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d1 &&
        counter_is accel_nested_binds -gt 0 &&
        counter_is accel_forwarded_invalidations -gt 0 &&
        counter_is translations -eq 0
}
