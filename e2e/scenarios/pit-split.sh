# shellcheck shell=bash
# pit-split: the PIT of the split irqchip (KVM has none without its PIC). The guest boots with
# no-kvmclock, so nothing tells it the TSC frequency: Linux measures it against PIT counter 2,
# gated and polled through port 0x61 (the FADT is hardware-reduced, so the PIT is its only
# reference). Without the VMM's PIT it says "Unable to calibrate against PIT". Interrupt
# remapping is on, as with every split-irqchip default; a disk's data survives.
DISKS="d0=16M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=1 no-kvmclock"
ARGS=(--cmdline "$CMDLINE" --irqchip split
    --iommu intel,x-scalable-mode=on,x-flts=on,intremap=on --disk path=@d0,iommu=on)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE" -device "$QEMU_SM_IOMMU" "${QEMU_DISK_D0[@]}")

guest() {
    cat <<'GUEST'
grep -q kvm-clock /sys/devices/system/clocksource/clocksource0/available_clocksource &&
    fail "kvm-clock is offered despite no-kvmclock"
ok "no kvm-clock: $(cat /sys/devices/system/clocksource/clocksource0/available_clocksource)"
dmesg | grep -q 'Unable to calibrate against PIT' &&
    fail "the PIT gave no reference: $(dmesg | grep -E 'tsc:' | tr '\n' '|')"
dmesg_has 'tsc: (Fast TSC calibration using PIT|Using PIT calibration value|PIT calibration matches)' \
    "the TSC is calibrated against the PIT"
dmesg_has 'tsc: Detected [0-9]+\.[0-9]+ MHz processor' "the TSC frequency is known"
data_check d0 "$(disk_dev 0)" "disk behind the vIOMMU, TSC clock"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d0
}
