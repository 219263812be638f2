# shellcheck shell=bash
# hostile: a guest that does not use the vIOMMU (intel_iommu=off) but whose user space programs
# it with busybox devmem: a seeded sequence of random values into the root-table, queue, fault
# and command registers (tables and queue pointing anywhere in its RAM and outside it,
# translation and queued invalidation enabled), then disk I/O on d0. A fixed finale then points
# the root table and the queue outside RAM with translation and the queue on, and reads d1.
#
# The VMM must stay up and exit 0 when the guest powers off. What the spec prescribes for the
# finale happens whatever the random part did: the queue's descriptor fetch fails (IQE,
# counter qi_errors), d1's first ring access faults (counter faults), and d1, unable to use its
# ring, sets DEVICE_NEEDS_RESET with a configuration-change interrupt (virtio 1.2, 2.1.2; the
# guest sees both; counter disk1_ring_errors). d0's fate depends on the random part and on what
# the guest's RAM holds, so it is printed, not checked.
#
# Every write is printed ("HOSTILE <n> <register> <width> <value>"); the sequence depends only
# on the seed (VTD_NEST_E2E_HOSTILE_SEED, default below) and on the unit's CAP/ECAP (where the
# fault-recording and IOTLB registers are, how many), so a failure replays with that seed.
# Fault-event data always asks for a fixed-mode interrupt on a device vector (0x30-0xeb, not
# 0x80): INIT, SMI, NMI or a system vector would be the guest attacking its own vCPU, which ends
# the run before the power-off this scenario checks for.
HOSTILE_SEED="${VTD_NEST_E2E_HOSTILE_SEED:-0x2f6b9e51}"
HOSTILE_ROUNDS=48
DISKS="d0=8M d1=8M"
CMDLINE="intel_iommu=off iomem=relaxed nokaslr"
ARGS=(--cmdline "$CMDLINE" --iommu intel,x-scalable-mode=on,x-flts=on
    --disk path=@d0,iommu=on --disk path=@d1,iommu=on)
QEMU_ARGS=("${QEMU_BASE[@]}" -append "$CMDLINE"
    -device intel-iommu,intremap=off,x-scalable-mode=on,x-flts=on
    -drive file=@d0,if=none,id=d0,format=raw,cache=none
    -device virtio-blk-pci,drive=d0,iommu_platform=on,disable-legacy=on
    -drive file=@d1,if=none,id=d1,format=raw,cache=none
    -device virtio-blk-pci,drive=d1,iommu_platform=on,disable-legacy=on)
QEMU_SKIPS="the VMM's counters and power-off line"

guest() {
    printf 'SEED=%s\nROUNDS=%s\n' "$HOSTILE_SEED" "$HOSTILE_ROUNDS"
    cat <<'GUEST'
# The register page (DRHD) and guest RAM as the VMM sets them up (--memory default 512M).
BASE=0xfed90000
RAM=$((512 << 20))
command -v devmem >/dev/null || fail "busybox has no devmem applet"
cap=$(devmem $((BASE + 0x08)) 64) || fail "cannot read CAP at $BASE with devmem"
ecap=$(devmem $((BASE + 0x10)) 64) || fail "cannot read ECAP with devmem"
echo "HOSTILE-SEED $SEED cap=$cap ecap=$ecap"
FRCD=$((BASE + ((cap >> 24) & 0x3ff) * 16))
NFR=$((((cap >> 40) & 0xff) + 1))
IVA=$((BASE + ((ecap >> 8) & 0x3ff) * 16))
IOTLB=$((IVA + 8))

# xorshift32: the whole sequence follows from SEED.
s=$((SEED & 0xffffffff))
[ "$s" != 0 ] || s=1
rnd() {
    s=$((s ^ ((s << 13) & 0xffffffff)))
    s=$((s ^ (s >> 17)))
    s=$((s ^ ((s << 5) & 0xffffffff)))
}
# r N: a number below N in $r.
r() {
    rnd
    r=$((s % $1))
}
hex64() {
    printf '0x%08x%08x' "$1" "$2"
}
# pointer: an address as its 32-bit halves $ph and $pl, and in hex as $p: a RAM page, an
# unaligned RAM address, the MMIO hole (registers, LAPIC, PCI window), above 4 GiB, or any
# 64-bit value.
pointer() {
    r 5
    case $r in
        0) r $((RAM >> 12)); ph=0 pl=$((r << 12)) ;;
        1) r "$RAM"; ph=0 pl=$r ;;
        2) r $((0x100000000 - RAM)); ph=0 pl=$(((RAM + r) & 0xfffff000)) ;;
        3) r 256; ph=$((r + 1)); rnd; pl=$((s & 0xfffff000)) ;;
        *) rnd; ph=$s; rnd; pl=$s ;;
    esac
    p=$(hex64 "$ph" "$pl")
}
n=0
w() {
    n=$((n + 1))
    echo "HOSTILE $n $1 $2 $3"
    devmem "$4" "$2" "$3" || echo "HOSTILE $n write failed"
}
GCMD_TE=0x80000000 GCMD_SRTP=0x40000000 GCMD_QIE=0x04000000
# round K: one write to register kind K (0-11).
round() {
    case $1 in
        0) pointer; w RTADDR 64 "$p" $((BASE + 0x20)) ;;
        1) r 4; case $r in
               0) v=$GCMD_SRTP ;;
               1) v=$((GCMD_SRTP | GCMD_TE | GCMD_QIE)) ;;
               2) v=$((GCMD_TE | GCMD_QIE)) ;;
               *) rnd; v=$s ;;
           esac
           w GCMD 32 "$(printf '0x%08x' "$v")" $((BASE + 0x18)) ;;
        2) pointer; r 8; w IQA 64 "$(hex64 "$ph" $((pl | r | (s & 0x800))))" $((BASE + 0x90)) ;;
        3) r 4096; w IQT 64 "$(printf '0x%x' $((r << 4)))" $((BASE + 0x88)) ;;
        4) rnd; w IQH 64 "$(printf '0x%x' $((s & 0x7fff0)))" $((BASE + 0x80)) ;;
        5) rnd; w FECTL 32 "$(printf '0x%08x' "$s")" $((BASE + 0x38)) ;;
        6) r $((0xec - 0x30)); v=$((0x30 + r)); [ "$v" != $((0x80)) ] || v=0x81
           w FEDATA 32 "$(printf '0x%08x' "$v")" $((BASE + 0x3c)) ;;
        7) pointer; w FEADDR 32 "$(printf '0x%08x' $((pl & 0xfffffffc)))" $((BASE + 0x40)) ;;
        8) rnd; w CCMD 64 "$(hex64 $(((s & 0x7fffffff) | 0x80000000)) "$s")" $((BASE + 0x28)) ;;
        9) pointer; w IVA 64 "$p" "$IVA"
           rnd; w IOTLB 64 "$(hex64 $(((s & 0x3fffffff) | 0x80000000)) 0)" "$IOTLB" ;;
        10) rnd; w FSTS 32 "$(printf '0x%08x' "$s")" $((BASE + 0x34)) ;;
        *) r "$NFR"; rnd
           w "FRCD$r.hi" 64 "$(hex64 "$s" 0)" $((FRCD + r * 16 + 8)) ;;
    esac
}

# dd_bounded WHAT ARGS...: a direct-I/O dd in the background, waited for at most 5 s (a disk
# whose device stopped leaves it blocked for good; failures are expected here).
dd_bounded() {
    what=$1
    shift
    dd "$@" 2>/dev/null &
    pid=$!
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "HOSTILE-IO $what: no answer after 5 s"
        stuck=1
    elif wait "$pid"; then
        echo "HOSTILE-IO $what: done"
    else
        echo "HOSTILE-IO $what: failed"
    fi
}

d0=$(disk_dev 0)
d1=$(disk_dev 1)
v1=$(readlink -f "/sys/block/${d1##*/}/device")
[ -r "$v1/status" ] || fail "no virtio status for $d1 ($v1/status)"
config_irqs() {
    awk -v name="${v1##*/}-config" '$NF == name { sum = 0; for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) sum += $i; print sum }' /proc/interrupts
}
irqs_before=$(config_irqs)
[ -n "$irqs_before" ] || fail "no ${v1##*/}-config line in /proc/interrupts"

# Every even round writes the next register kind in turn, every odd one a random kind; after
# every 12 rounds d0 reads (and at the end writes) through whatever state that left, until
# one of its requests gets no answer.
stuck=0
k=0
while [ "$k" -lt "$ROUNDS" ]; do
    if [ $((k % 2)) = 0 ]; then round $((k / 2 % 12)); else r 12; round "$r"; fi
    k=$((k + 1))
    [ $((k % 12)) = 0 ] && [ "$stuck" = 0 ] || continue
    echo "HOSTILE-GSTS $(devmem $((BASE + 0x1c)) 32) FSTS $(devmem $((BASE + 0x34)) 32)"
    r 2044
    dd_bounded "d0 read at $r after round $k" if="$d0" of=/dev/null bs=4k count=4 skip="$r" iflag=direct
done
[ "$stuck" = 1 ] || dd_bounded "d0 write" if=/dev/zero of="$d0" bs=4k count=8 oflag=direct
echo "HOSTILE-D0 status $(cat "$(readlink -f "/sys/block/${d0##*/}/device")/status")"

# The finale: queue and root table outside RAM, translation and the queue on.
OUTSIDE=0x40000000
w GCMD 32 0 $((BASE + 0x18))
w FSTS 32 0x7f $((BASE + 0x34))
w IQT 64 0 $((BASE + 0x88))
w IQA 64 "$OUTSIDE" $((BASE + 0x90))
w RTADDR 64 $((OUTSIDE | 0x400)) $((BASE + 0x20))
w GCMD 32 "$GCMD_SRTP" $((BASE + 0x18))
w GCMD 32 $((GCMD_TE | GCMD_QIE)) $((BASE + 0x18))
w IQT 64 0x10 $((BASE + 0x88))
fsts=$(devmem $((BASE + 0x34)) 32)
echo "HOSTILE-FINALE GSTS $(devmem $((BASE + 0x1c)) 32) FSTS $fsts"
[ $((fsts & 0x10)) != 0 ] && ok "a queue fetched from outside RAM stops with IQE" ||
    fail "FSTS $fsts has no IQE after the queue was pointed outside RAM"
dd_bounded "d1 read" if="$d1" of=/dev/null bs=4k count=8 iflag=direct
i=0
until [ $(($(cat "$v1/status") & 0x40)) != 0 ]; do
    [ "$i" -lt 100 ] || fail "$d1: no DEVICE_NEEDS_RESET after its ring faulted (status $(cat "$v1/status"))"
    sleep 0.1
    i=$((i + 1))
done
ok "$d1 sets DEVICE_NEEDS_RESET (status $(cat "$v1/status"))"
irqs_after=$(config_irqs)
[ "$irqs_after" -gt "$irqs_before" ] &&
    ok "$d1 sent a configuration-change interrupt ($irqs_before -> $irqs_after)" ||
    fail "$d1: no configuration-change interrupt ($irqs_before -> $irqs_after)"
GUEST
}

check() {
    guest_ran "$1" || return 1
    require '^HOSTILE-FINALE ' "the guest never reached the finale" || return 1
    [ "$INNER" = qemu ] && return 0
    require '^vtd-nest: the guest powered off' "the VMM did not report the guest's power-off" &&
        counter_is qi_errors -ge 1 && counter_is faults -ge 1 &&
        counter_is disk1_ring_errors -eq 1
}
