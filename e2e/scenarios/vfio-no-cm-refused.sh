# shellcheck shell=bash
# vfio-no-cm-refused: a real device behind a vIOMMU without caching-mode=on: without caching mode
# the guest does not invalidate when it creates mappings, so they cannot be shadowed. The VMM
# must refuse before the guest starts with QEMU's sentence (which --inner qemu checks in QEMU).
VFIO="vfio0=16M"
VFIO_MODULES=container
CMDLINE="intel_iommu=on,sm_off iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --iommu intel --device path=@vfio0,iommu=on,backend=container)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE" -device intel-iommu,intremap=on
    "${QEMU_VFIO0_CONTAINER[@]}")

guest() {
    echo 'ok "the guest should not have started"'
}

check() {
    # QEMU 10.0 says "We need to set caching-mode=on for intel-iommu to enable device assignment
    # with IOMMU protection."; vtd-nest says QEMU's other sentence, "Device assignment is not
    # allowed without enabling caching-mode=on for Intel IOMMU."
    vmm_refused "$1" 'caching-mode=on.*device assignment|Device assignment.*caching-mode=on'
}
