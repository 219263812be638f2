# shellcheck shell=bash
# e2e/lib/scenario.sh: the bash side of a scenario (e2e/scenarios/NAME.sh): the environment its
# file is sourced in (QEMU_BASE & co., the checks of e2e/lib/checks.sh) and the actions the
# harness (harness/vtdharness/scenarios.py) runs, one bash process each:
#
#   bash e2e/lib/scenario.sh NAME describe      its variables (and guest script), NUL-separated
#   bash e2e/lib/scenario.sh NAME check STATUS  host-side checks of a job's output ($OUT, $INNER)
#   bash e2e/lib/scenario.sh NAME host_check    a host-only scenario ($VMM_HOST, $WORK, $INNER)
#
# check and host_check print why they failed and exit 1, or exit 0 silently.
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=e2e/lib/common.sh
. "$E2E_DIR/lib/common.sh"
# shellcheck source=e2e/lib/checks.sh
. "$E2E_DIR/lib/checks.sh"
# shellcheck source=e2e/lib/side.sh
. "$E2E_DIR/lib/side.sh"

# What the scenarios' QEMU_ARGS build on (the reference setup of ../shared/reference).
QEMU_BASE=(-accel kvm -M q35,kernel-irqchip=split -cpu host -m 512M -smp 1)
QEMU_SM_IOMMU=intel-iommu,intremap=on,x-scalable-mode=on,x-flts=on
QEMU_DISK_D0=(-drive file=@d0,if=none,id=d0,format=raw,cache=none
    -device virtio-blk-pci,drive=d0,iommu_platform=on,disable-legacy=on)
# The real device vfio0 through the VFIO container (type1) or through iommufd.
QEMU_VFIO0_CONTAINER=(-device vfio-pci,sysfsdev=@vfio0)
QEMU_VFIO0_IOMMUFD=(-object iommufd,id=fd0 -device vfio-pci,sysfsdev=@vfio0,iommufd=fd0)

# l2_initrd INIT OUT [TAG]: an L2 initramfs running INIT (for scenarios that boot the VMM
# themselves, as refused does).
l2_initrd() {
    PYTHONPATH="$E2E_DIR/../harness${PYTHONPATH:+:$PYTHONPATH}" python3 -m vtdharness l2-initrd "$@"
}

# describe: one "S:NAME" record and its value per variable, "A:NAME", a count and the items per
# array, "S:GUEST_SCRIPT" with what the guest function prints, if it has one, and "S:SIDE_SCRIPT"
# with what the side function prints (a sh script run next to the VMM), if it has one.
describe() {
    local v
    for v in DISKS QEMU_SKIPS HOST_ONLY GUEST_KERNEL VFIO VFIO_MODULES; do
        printf 'S:%s\0%s\0' "$v" "${!v}"
    done
    printf 'A:ARGS\0%s\0' "${#ARGS[@]}"
    [ "${#ARGS[@]}" = 0 ] || printf '%s\0' "${ARGS[@]}"
    printf 'A:QEMU_ARGS\0%s\0' "${#QEMU_ARGS[@]}"
    [ "${#QEMU_ARGS[@]}" = 0 ] || printf '%s\0' "${QEMU_ARGS[@]}"
    if declare -F guest >/dev/null; then printf 'S:GUEST_SCRIPT\0%s\0' "$(guest)"; fi
    if declare -F side >/dev/null; then printf 'S:SIDE_SCRIPT\0%s\0' "$(side)"; fi
}

scenario_file="$E2E_DIR/scenarios/${1:?scenario name}.sh"
[ -f "$scenario_file" ] || die "no scenario $1 (no $scenario_file)"
DISKS="" ARGS=() QEMU_ARGS=() QEMU_SKIPS="" HOST_ONLY=0 GUEST_KERNEL="" VFIO="" VFIO_MODULES=container
# shellcheck source=/dev/null
. "$scenario_file"
case "${2:?action}" in
    describe) describe ;;
    # In a condition, as the scenarios' functions were written for (set -e does not cut them).
    check) if check "${3:?status}"; then exit 0; else exit 1; fi ;;
    host_check) if host_check; then exit 0; else exit 1; fi ;;
    *) die "unknown scenario action $2" ;;
esac
