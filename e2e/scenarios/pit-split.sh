# shellcheck shell=bash
# pit-split: the PIT of the split irqchip (KVM has none without its PIC), driven by the guest
# (e2e/guest/portio.c) the way Linux's TSC calibration drives it: counter 2 in mode 0 behind its
# gate (port 0x61 bit 0), OUT2 read back in port 0x61 bit 5, counter latch and read-back
# commands on port 0x43. With the gate low the count is loaded but held, so the checks do not
# depend on how long an exit takes under emulation; raising the gate starts it, and a second
# later OUT2 is high (terminal count, 55 ms). Without a PIT every read of 0x61 is all ones.
# Interrupt remapping is on, as with every split-irqchip default; a disk's data survives.
DISKS="d0=16M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --irqchip split
    --iommu intel,x-scalable-mode=on,x-flts=on,intremap=on --disk path=@d0,iommu=on)
# No QEMU form: under QEMU as the inner VMM the guest's first IN after iopl(3) takes a general
# protection fault ("traps: portio ... general protection fault ... in portio"), while the same
# kernel and tool reach the ports under vtd-nest; the cause is not known.
QEMU_ARGS=()

guest() {
    cat <<'GUEST'
latched2() { # counter-latch command for counter 2, then its two bytes
    portio outb 0x43 0x80 inb 0x42 inb 0x42 | { read -r lo; read -r hi; echo $((hi * 256 + lo)); }
}
b=$(portio inb 0x61) || fail "portio cannot reach the ports"
# Gate 2 low, speaker off; counter 2, LSB then MSB, mode 0, binary; count 65535; port B again.
b=$(portio outb 0x61 $((b & ~3)) outb 0x43 0xb0 outb 0x42 0xff outb 0x42 0xff inb 0x61)
[ $((b & 0x21)) = 0 ] || fail "port 0x61 reads $b after gate low and a new count: want gate and OUT2 low"
c1=$(latched2)
sleep 0.2
c2=$(latched2)
[ "$c1" = 65535 ] && [ "$c2" = 65535 ] || fail "a gated mode-0 count moved: $c1, then $c2, want 65535 held"
# Read-back of counter 2's status and count (0xc8): the status byte comes first.
set -- $(portio outb 0x43 0xc8 inb 0x42 inb 0x42 inb 0x42)
[ "$1" = $((0x30)) ] || fail "read-back status $1, want 0x30 (OUT low, loaded, LSB/MSB, mode 0)"
[ $(($3 * 256 + $2)) = 65535 ] || fail "read-back count $(($3 * 256 + $2)), want 65535"
ok "gate low: count held at $c1, OUT2 low, read-back status 0x30"
portio outb 0x61 $((b | 1))    # gate high: counting starts
sleep 1
b=$(portio inb 0x61)
[ $((b & 0x20)) != 0 ] || fail "OUT2 still low 1 s after a 55 ms count started (port 0x61 = $b)"
c3=$(latched2)
[ "$c3" != 65535 ] || fail "the count did not move after the gate rose"
ok "gate high: OUT2 rose at terminal count, count now $c3 (wrapped)"
data_check d0 "$(disk_dev 0)" "disk behind the vIOMMU, split irqchip"
GUEST
}

check() {
    guest_ran "$1" && disk_hash_matches d0
}
