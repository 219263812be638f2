# shellcheck shell=bash
# intremap: interrupt remapping in extended interrupt mode on the split irqchip (its default
# with intremap=on), four vCPUs, an emulated disk behind the vIOMMU and a disk assigned through
# the software host IOMMU. The guest takes the remapping path (x2APIC with remapping), COM1 is
# a remapped IO-APIC pin that follows its affinity to another vCPU (an IRTE rewritten and
# invalidated), both disks interrupt through remapped MSI-X spread over the vCPUs and keep their
# data, and the VMM counts remapped interrupts and no interrupt fault.
DISKS="d0=16M d1=16M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --cpus 4
    --iommu intel,x-scalable-mode=on,x-flts=on,caching-mode=on,intremap=on,eim=on
    --disk path=@d0,iommu=on --disk path=@d1,assigned=sim)
QEMU_ARGS=()

guest() {
    cat <<'GUEST'
ncpu=$(grep -c '^processor' /proc/cpuinfo)
if [ "$ncpu" = 4 ]; then ok "4 vCPUs online"; else fail "$ncpu vCPUs online, want 4"; fi
dmesg_has 'DMAR-IR: IOAPIC id 0 under DRHD base +0xfed90000' "the IOAPIC is under the remapping unit"
dmesg_has 'DMAR-IR: Enabled IRQ remapping in x2apic mode' "interrupt remapping in x2APIC mode"
line=$(grep -E 'IR-IO-APIC +4-edge +ttyS0' /proc/interrupts) ||
    fail "ttyS0 is not a remapped IO-APIC pin: $(grep -E 'ttyS0' /proc/interrupts | tr -s ' ')"
ok "ttyS0 is remapped IO-APIC pin 4:$(echo "$line" | tr -s ' ')"
# A new destination: Linux rewrites the IRTE and invalidates its cache entry; the VMM's route
# must follow.
serial_follows_affinity "$line" 3
data_check d0 "$(disk_dev 0)" "emulated disk, remapped MSI-X"
data_check d1 "$(disk_dev 1)" "assigned disk, remapped MSI-X"
for d in 0 1; do
    pci=$(pci_of "$(disk_dev "$d")")
    n=$(remapped_requests "$pci")
    if [ "$n" -gt 0 ]; then
        ok "disk $d ($pci): $n request interrupts through IR-PCI-MSIX"
    else
        fail "disk $d ($pci): no request interrupt through IR-PCI-MSIX: $(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' '|')"
    fi
done
spread_over_cpus 'IR-PCI-MSI.*virtio[0-9]+-req' "remapped virtio request interrupts"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d0 && disk_hash_matches d1 &&
        counter_is interrupts_remapped -gt 0 &&
        counter_is interrupt_faults -eq 0
}
