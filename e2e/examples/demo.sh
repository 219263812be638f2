# e2e/examples/demo.sh: the guest side of scripts/demo (busybox sh, run as init by e2e/run).
# Two virtio-blk disks: vda is emulated and translated by the vIOMMU, vdb is "assigned" — its
# DMA goes through the (software) host IOMMU's nested page table, bound from the guest's own
# first-stage table; or (scripts/demo's second guest) nvme0n1, a real device assigned through
# VFIO, driven by the guest's own NVMe driver. Shows the guest's IOMMU view, writes a random
# pattern over each whole disk present with direct I/O, reads it back, and prints
# "GUEST-DISK <name> <sha256>" for each, to compare with the runner's "HOST-DISK <name> <sha256>"
# lines computed outside the guest (scripts/demo checks that every disk it gave has both).
set -e
echo "guest: Linux $(uname -r), init reached at $(cut -d' ' -f1 /proc/uptime) s uptime"
echo "guest: the kernel's DMAR lines:"
dmesg | grep -E 'DMAR:|iommu group' | sed 's/^/guest:   /' | head -n 30
if [ -r /sys/class/iommu/dmar0/intel-iommu/cap ]; then
    echo "guest: dmar0 cap=$(cat /sys/class/iommu/dmar0/intel-iommu/cap) ecap=$(cat /sys/class/iommu/dmar0/intel-iommu/ecap)"
fi
verdict=0
# The NVMe driver probes asynchronously: give a real device up to 10 s to show up.
if [ -e /sys/class/nvme/nvme0 ]; then
    i=0
    while [ ! -b /dev/nvme0n1 ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
fi
for pair in vda:emulated vdb:assigned nvme0n1:real; do
    dev=/dev/${pair%%:*}
    name=${pair#*:}
    [ -b "$dev" ] || continue
    case "$name" in
        real) pci=$(basename "$(readlink -f /sys/class/nvme/nvme0/device)" 2>/dev/null || echo '?') ;;
        *) pci=$(basename "$(readlink -f "/sys/block/${dev#/dev/}/device/..")" 2>/dev/null || echo '?') ;;
    esac
    group=$(basename "$(readlink -f "/sys/bus/pci/devices/$pci/iommu_group" 2>/dev/null)" 2>/dev/null || echo none)
    type=$(cat "/sys/kernel/iommu_groups/$group/type" 2>/dev/null || echo '?')
    mib=$(($(cat "/sys/block/${dev#/dev/}/size") / 2048))
    dd if=/dev/urandom of=/tmp/pattern bs=1M count="$mib" 2>/dev/null
    want=$(sha256sum /tmp/pattern | cut -d' ' -f1)
    dd if=/tmp/pattern of="$dev" bs=1M oflag=direct 2>/dev/null
    got=$(dd if="$dev" bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
    echo "guest: $dev ($name disk, PCI $pci, IOMMU group $group, domain $type): $mib MiB written and read back with direct I/O"
    echo "GUEST-DISK $name $got"
    if [ "$got" != "$want" ]; then echo "guest: $dev DATA MISMATCH"; verdict=1; fi
done
exit "$verdict"
