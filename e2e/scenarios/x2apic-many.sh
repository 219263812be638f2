# shellcheck shell=bash
# x2apic-many: 260 vCPUs, which only x2APIC with interrupt remapping in extended interrupt mode
# can address. The vCPUs start in x2APIC mode (as firmware leaves them), the guest registers all
# 260 from the MADT's x2APIC structures and enables remapping in x2APIC mode; it boots two
# (maxcpus=2: bringing up 260 under emulation takes minutes), then onlines vCPU 259 (APIC ID 259)
# and moves COM1's interrupt there: the remapped message carries destination bits 31:8 to KVM.
# A disk behind the vIOMMU keeps its data.
DISKS="d0=16M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=1 maxcpus=2"
ARGS=(--cmdline "$CMDLINE" --cpus 260
    --iommu intel,x-scalable-mode=on,x-flts=on,intremap=on,eim=on --disk path=@d0,iommu=on)
QEMU_ARGS=()

guest() {
    cat <<'GUEST'
dmesg_has 'x2apic: enabled by BIOS' "the boot vCPU starts in x2APIC mode"
dmesg_has 'Allowing 260 present CPUs' "all 260 vCPUs registered from the MADT"
dmesg_has 'DMAR-IR: Enabled IRQ remapping in x2apic mode' "interrupt remapping in x2APIC mode"
echo 1 >/sys/devices/system/cpu/cpu259/online || fail "cannot online vCPU 259"
apicid=$(awk '/^processor/ { p = $3 } /^apicid/ && p == 259 { print $3 }' /proc/cpuinfo)
if [ "$apicid" = 259 ]; then ok "vCPU 259 is online with APIC ID 259"; else fail "vCPU 259 has APIC ID '$apicid'"; fi
line=$(grep -E 'IR-IO-APIC +4-edge +ttyS0' /proc/interrupts) ||
    fail "ttyS0 is not a remapped IO-APIC pin: $(grep ttyS0 /proc/interrupts | tr -s ' ')"
# x2APIC destination 259, through the remapped entry.
serial_follows_affinity "$line" 259
data_check d0 "$(disk_dev 0)" "disk behind the vIOMMU with 260 vCPUs"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d0 && counter_is interrupt_faults -eq 0
}
