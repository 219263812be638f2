# shellcheck shell=bash
# identity: iommu=pt gives the disk an identity (pass-through) domain; then the guest switches
# its group at run time DMA -> identity -> DMA (unbind, write the group's type, rebind), with
# data written and read back correctly after every step.
DISKS="d0=16M"
CMDLINE="intel_iommu=on,sm_on iommu=pt"
ARGS=(--cmdline "$CMDLINE" --iommu intel,x-scalable-mode=on,x-flts=on --disk path=@d0,iommu=on)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE" -device "$QEMU_SM_IOMMU" "${QEMU_DISK_D0[@]}")
QEMU_SKIPS=""

guest() {
    cat <<'GUEST'
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
dev=$(disk_dev 0)
pci=$(pci_of "$dev")
expect_domain_type "$pci" identity
data_check d0 "$dev" "boot-time identity domain"
rebind_with_type "$pci" DMA
data_check d0 "$(disk_dev 0)" "after switching to DMA"
rebind_with_type "$pci" identity
data_check d0 "$(disk_dev 0)" "after switching back to identity"
rebind_with_type "$pci" DMA
data_check d0 "$(disk_dev 0)" "after switching to DMA again"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d0
}
