# shellcheck shell=bash
# irqchip-split: the split irqchip (LAPICs in KVM, the VMM's IOAPIC and PIT, no PIC) with four
# vCPUs and interrupt remapping off; two virtio-blk disks, one behind the vIOMMU. The serial
# line is IO-APIC pin 4 and follows its affinity to another vCPU (the RTE's destination
# reprogrammed), the disks' MSI-X vectors land on more than one vCPU, and both disks' data
# survives sequential direct I/O.
DISKS="d0=16M d1=16M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --irqchip split --cpus 4
    --iommu intel,x-scalable-mode=on,x-flts=on,intremap=off --disk path=@d0,iommu=on --disk path=@d1)
QEMU_ARGS=(-accel kvm -M q35,kernel-irqchip=split -cpu host -m 512M -smp 4 -append "$CMDLINE"
    -device intel-iommu,x-scalable-mode=on,x-flts=on,intremap=off "${QEMU_DISK_D0[@]}"
    -drive file=@d1,if=none,id=d1,format=raw,cache=none
    -device virtio-blk-pci,drive=d1,disable-legacy=on)

guest() {
    cat <<'GUEST'
ncpu=$(grep -c '^processor' /proc/cpuinfo)
if [ "$ncpu" = 4 ]; then ok "4 vCPUs online"; else fail "$ncpu vCPUs online, want 4"; fi
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
line=$(grep -E ' IO-APIC +4-edge +ttyS0' /proc/interrupts) ||
    fail "ttyS0 is not IO-APIC pin 4: $(grep -E 'ttyS0|IO-APIC' /proc/interrupts | tr -s ' ' | tr '\n' '|')"
ok "ttyS0 is IO-APIC pin 4:$(echo "$line" | tr -s ' ')"

serial_follows_affinity "$line" 2

data_check d0 "$(disk_dev 0)" "disk behind the vIOMMU, split irqchip"
data_check d1 "$(disk_dev 1)" "disk without the vIOMMU, split irqchip"
msix=$(grep -cE 'PCI-MSI.*virtio[0-9]+-req' /proc/interrupts) || true
[ "$msix" -ge 2 ] ||
    fail "want the request queues of both disks as MSI-X interrupts: $(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' '|')"
ok "$msix virtio request queues are MSI-X interrupts"
grep -q 'IR-' /proc/interrupts && fail "remapped interrupts with intremap=off: $(grep -m1 'IR-' /proc/interrupts | tr -s ' ')"
ok "no remapped interrupt (intremap=off)"
spread_over_cpus 'virtio[0-9]+-req' "virtio request interrupts"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d0 && disk_hash_matches d1
}
