# e2e/examples/data-integrity.sh: a guest init for e2e/run (busybox sh). Shows the guest's
# IOMMU view, writes a random pattern over the whole first disk with direct I/O, reads it back
# and prints "GUEST-DISK d0 <sha256>", to compare with the runner's "HOST-DISK d0 <sha256>".
#
#   e2e/run --inner qemu --disk d0=16M --init e2e/examples/data-integrity.sh -- \
#       -accel kvm -M q35,kernel-irqchip=split -cpu host -m 512M -smp 1 \
#       -device intel-iommu,intremap=on,x-scalable-mode=on,x-flts=on \
#       -drive file=@d0,if=none,id=d0,format=raw,cache=none \
#       -device virtio-blk-pci,drive=d0,iommu_platform=on,disable-legacy=on \
#       -append "intel_iommu=on,sm_on iommu.strict=1"
set -e
echo "guest: Linux $(uname -r), init reached at $(cut -d' ' -f1 /proc/uptime) s uptime"
dmesg | grep -E 'DMAR: Intel\(R\) Virtualization|DMAR: IOMMU enabled' || echo "guest: no DMAR lines"
if [ -r /sys/class/iommu/dmar0/intel-iommu/cap ]; then
    echo "guest: dmar0 cap=$(cat /sys/class/iommu/dmar0/intel-iommu/cap) ecap=$(cat /sys/class/iommu/dmar0/intel-iommu/ecap)"
fi
dev=/dev/vda
[ -b "$dev" ] || { echo "guest: no $dev"; exit 1; }
mib=$(($(cat /sys/block/vda/size) / 2048))
dd if=/dev/urandom of=/tmp/pattern bs=1M count="$mib" 2>/dev/null
want=$(sha256sum /tmp/pattern | cut -d' ' -f1)
start=$(cut -d' ' -f1 /proc/uptime)
dd if=/tmp/pattern of="$dev" bs=1M oflag=direct 2>/dev/null
got=$(dd if="$dev" bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
end=$(cut -d' ' -f1 /proc/uptime)
echo "guest: wrote and read back $mib MiB with direct I/O ($start s -> $end s uptime)"
echo "GUEST-DISK d0 $got"
if [ "$got" = "$want" ]; then echo "guest: DATA OK"; else echo "guest: DATA MISMATCH"; exit 1; fi
