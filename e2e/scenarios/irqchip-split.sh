# shellcheck shell=bash
# irqchip-split: the split irqchip (LAPICs in KVM, the VMM's IOAPIC, no PIC, no PIT) with four
# vCPUs and interrupt remapping off; two virtio-blk disks, one behind the vIOMMU. The serial
# line is IO-APIC pin 4 and follows its affinity to another vCPU (the RTE's destination
# reprogrammed), the disks' MSI-X vectors land on more than one vCPU, and both disks' data
# survives sequential direct I/O.
DISKS="d0=16M d1=16M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --irqchip split --cpus 4
    --iommu intel,x-scalable-mode=on,x-flts=on --disk path=@d0,iommu=on --disk path=@d1)
QEMU_ARGS=(-accel kvm -M q35,kernel-irqchip=split -cpu host -m 512M -smp 4 -append "$CMDLINE"
    -device intel-iommu,x-scalable-mode=on,x-flts=on "${QEMU_DISK_D0[@]}"
    -drive file=@d1,if=none,id=d1,format=raw,cache=none
    -device virtio-blk-pci,drive=d1,disable-legacy=on)

guest() {
    cat <<'GUEST'
# irq_count PATTERN CPU: the count in column CPU (0-based) of the first /proc/interrupts line
# matching PATTERN.
irq_count() {
    awk -v cpu="$2" -v pat="$1" '$0 ~ pat { print $(2 + cpu); exit }' /proc/interrupts
}

# cpus_used PATTERN: how many CPU columns are non-zero, summed over every line matching PATTERN.
cpus_used() {
    awk -v pat="$1" -v n="$ncpu" '
        $0 ~ pat { for (c = 0; c < n; c++) sum[c] += $(2 + c) }
        END { used = 0; for (c = 0; c < n; c++) if (sum[c] > 0) used++; print used }
    ' /proc/interrupts
}

ncpu=$(grep -c '^processor' /proc/cpuinfo)
if [ "$ncpu" = 4 ]; then ok "4 vCPUs online"; else fail "$ncpu vCPUs online, want 4"; fi
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
line=$(grep -E 'IO-APIC +4-edge +ttyS0' /proc/interrupts) ||
    fail "ttyS0 is not IO-APIC pin 4: $(grep -E 'ttyS0|IO-APIC' /proc/interrupts | tr -s ' ' | tr '\n' '|')"
ok "ttyS0 is IO-APIC pin 4:$(echo "$line" | tr -s ' ')"

# Move COM1's interrupt to CPU 2, then send it output a line at a time (each line starts a
# transmission, so each interrupts at least once; one interrupt may still arrive where it was
# while Linux moves it).
irq=$(echo "$line" | awk '{ sub(":", "", $1); print $1 }')
echo 4 >"/proc/irq/$irq/smp_affinity" || fail "cannot set the affinity of IRQ $irq"
before=$(irq_count 'ttyS0' 2)
i=0
while [ "$i" -lt 32 ]; do
    echo "irqchip-split: serial line $i on its way to CPU 2"
    sleep 0.05
    i=$((i + 1))
done
after=$(irq_count 'ttyS0' 2)
if [ "$after" -gt "$before" ]; then
    ok "ttyS0 interrupts on CPU 2 after the affinity change ($before -> $after)"
else
    fail "no ttyS0 interrupt on CPU 2 after the affinity change (effective affinity $(cat "/proc/irq/$irq/effective_affinity")): $(grep ttyS0 /proc/interrupts | tr -s ' ')"
fi

data_check d0 "$(disk_dev 0)" "disk behind the vIOMMU, split irqchip"
data_check d1 "$(disk_dev 1)" "disk without the vIOMMU, split irqchip"
msix=$(grep -cE 'PCI-MSI.*virtio[0-9]+-req' /proc/interrupts) || true
[ "$msix" -ge 2 ] ||
    fail "want the request queues of both disks as MSI-X interrupts: $(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' '|')"
ok "$msix virtio request queues are MSI-X interrupts"
used=$(cpus_used 'virtio[0-9]+-req')
if [ "$used" -ge 2 ]; then
    ok "virtio request interrupts landed on $used vCPUs"
else
    fail "virtio request interrupts landed on $used vCPU(s): $(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' '|')"
fi
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d0 && disk_hash_matches d1
}
