# shellcheck shell=bash
# vfio-sm-container: as vfio-sm-iommufd, through the legacy VFIO container (type1) behind a
# scalable-mode vIOMMU with second-stage translation only (x-flts=off) and caching-mode=on: the
# VMM shadows the second-stage tables the guest points its PASID entries at. Same data check
# as vfio-legacy-container: guest direct I/O in a strict DMA domain, hash against the host image.
VFIO="vfio0=16M"
VFIO_MODULES=container
CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --iommu intel,x-scalable-mode=on,x-flts=off,caching-mode=on
    --device path=@vfio0,iommu=on,backend=container)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE"
    -device intel-iommu,intremap=on,caching-mode=on,x-scalable-mode=on,x-flts=off "${QEMU_VFIO0_CONTAINER[@]}")

guest() {
    cat <<'GUEST'
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
assigned_nvme_check vfio0 "assigned NVMe, scalable second stage, container" DMA
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches vfio0
}
