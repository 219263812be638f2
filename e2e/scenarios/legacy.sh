# shellcheck shell=bash
# legacy: the vIOMMU without scalable mode (legacy context entries, second-stage tables); the
# guest runs with sm_off. Same DMAR, group, CAP/ECAP and data checks as sm-strict.
DISKS="d0=16M"
CMDLINE="intel_iommu=on,sm_off"
ARGS=(--cmdline "$CMDLINE" --iommu intel --disk path=@d0,iommu=on)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE" -device intel-iommu,intremap=on "${QEMU_DISK_D0[@]}")
QEMU_SKIPS="cap/ecap against the VMM's VTD line"

guest() {
    cat <<'GUEST'
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
dmesg_has 'Adding to iommu group' "devices join IOMMU groups"
report_cap
dev=$(disk_dev 0)
pci=$(pci_of "$dev")
t=$(cat "/sys/kernel/iommu_groups/$(group_of "$pci")/type")
case "$t" in DMA | DMA-FQ) ok "$pci has a $t domain" ;; *) fail "$pci has a $t domain, want DMA or DMA-FQ" ;; esac
data_check d0 "$dev" "legacy-mode DMA domain"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d0 && { [ "$INNER" = qemu ] || cap_matches; }
}
