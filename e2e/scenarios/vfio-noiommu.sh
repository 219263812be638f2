# shellcheck shell=bash
# vfio-noiommu: the real device (emulated NVMe in L1, vfio-pci) assigned to a guest with no
# vIOMMU: the VMM maps all guest RAM once. backend=auto must take iommufd (L1 has /dev/iommu:
# the iommufd module set is loaded). The guest's NVMe driver writes and reads the whole disk with
# direct I/O; the hash it prints must equal the host's hash of the backing image.
VFIO="vfio0=16M"
VFIO_MODULES=iommufd
ARGS=(--device path=@vfio0)
QEMU_ARGS=("${QEMU_BASE[@]}" "${QEMU_VFIO0_IOMMUFD[@]}")

guest() {
    cat <<'GUEST'
if [ -e /sys/class/iommu/dmar0 ]; then fail "the guest has a DMAR unit"; else ok "no vIOMMU in the guest"; fi
assigned_nvme_check vfio0 "assigned NVMe, no vIOMMU"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches vfio0
}
