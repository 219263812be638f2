# shellcheck shell=bash
# vfio-flts-refused: a real device behind a first-stage vIOMMU (x-flts=on) on a host IOMMU that
# cannot nest (L1's emulated VT-d has ECAP.NEST clear, so iommufd refuses a nest parent with
# EOPNOTSUPP). Linux does not invalidate first-stage maps even with caching mode, so a shadow
# cannot follow them either: the VMM must refuse before the guest starts, saying that the host
# IOMMU does not support nested translation and that x-flts=off,caching-mode=on shadows instead.
# Under --inner qemu, QEMU's own refusal is checked.
VFIO="vfio0=16M"
VFIO_MODULES=iommufd
CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --iommu intel,x-scalable-mode=on,x-flts=on,caching-mode=on
    --device path=@vfio0,iommu=on,backend=iommufd)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE"
    -device intel-iommu,intremap=on,caching-mode=on,x-scalable-mode=on,x-flts=on "${QEMU_VFIO0_IOMMUFD[@]}")
# QEMU 10.0 refuses x-flts=on for every VFIO device (its words: "host device is uncompatible with
# stage-1 translation").
QEMU_REFUSAL='uncompatible with stage-1 translation'

guest() {
    echo 'ok "the guest should not have started"'
}

check() {
    if [ "$INNER" = qemu ]; then
        vmm_refused "$1" "$QEMU_REFUSAL"
    else
        vmm_refused "$1" 'nested translation.*x-flts=off'
    fi
}
