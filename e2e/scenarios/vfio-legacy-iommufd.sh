# shellcheck shell=bash
# vfio-legacy-iommufd: a real PCI device (an emulated NVMe in L1, bound to vfio-pci) assigned
# through iommufd behind a legacy-mode vIOMMU with caching-mode=on: the VMM shadows the guest's
# second-stage tables into the IOAS. The guest's own NVMe driver writes and reads the whole disk
# with direct I/O in a strict DMA domain (caching mode makes Linux strict); the hash it prints
# must equal the hash of the NVMe's backing image, taken on the host outside L1.
VFIO="vfio0=16M"
VFIO_MODULES=iommufd
CMDLINE="intel_iommu=on,sm_off iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --iommu intel,caching-mode=on --device path=@vfio0,iommu=on,backend=iommufd)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE" -device intel-iommu,intremap=on,caching-mode=on
    "${QEMU_VFIO0_IOMMUFD[@]}")

guest() {
    cat <<'GUEST'
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
assigned_nvme_check vfio0 "assigned NVMe, legacy mode, iommufd" DMA
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches vfio0
}
