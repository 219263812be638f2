# shellcheck shell=bash
# api: the control plane while a guest runs. The VMM serves --api-socket; next to it (in L1),
# `vtd-nest remote` reads vm.info, the counters and the vIOMMU state of a booted scalable-mode
# first-stage guest with interrupt remapping (the split irqchip), pauses it (its console output stops: serial_tx_bytes stands still), resumes
# it (the count moves again), has SIGUSR1 write the state to the VMM's stderr, gets one-sentence
# refusals for a missing disk and for the unplug of an unknown device,
# and finally shuts it down: the VMM exits 0 and removes the socket. Its log (warn, and info for
# vmm::running) goes to --log-file with targets, its counters to --counters as JSON. The guest first moves data
# through its translated disk d0, then writes a ready mark on d1 (the side's cue) and prints a
# line a second until the shutdown.
DISKS="d0=16M d1=1M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
API_SOCKET=/tmp/vtd-nest-e2e-api.sock
API_LOG=/tmp/vtd-nest-e2e-api.log
API_COUNTERS=/tmp/vtd-nest-e2e-api-counters.json
ARGS=(--cmdline "$CMDLINE" --cpus 2 --iommu intel,x-scalable-mode=on,x-flts=on,intremap=on,eim=on
    --disk path=@d0,iommu=on --disk path=@d1 --api-socket "$API_SOCKET"
    --log-level warn,vmm::running=info --log-file "$API_LOG" --counters "$API_COUNTERS")
QEMU_ARGS=()

guest() {
    cat <<'GUEST'
report_cap
dev=$(disk_dev 0)
data_check d0 "$dev" "strict DMA domain"
put_mark "$(disk_dev 1)" API-GUEST-READY
i=0
while :; do
    i=$((i + 1))
    echo "API-GUEST-TICK $i"
    sleep 1
done
GUEST
}

side() {
    cat <<SIDE
sock=$API_SOCKET
log=$API_LOG
counters=$API_COUNTERS
SIDE
    # The mark disk: the second --disk.
    side_prelude API 2
    cat <<'SIDE'
serial() { r counters | sed -n 's/^counter serial_tx_bytes //p'; }
wait_mark API-GUEST-READY 240
[ -S "$sock" ] || die "no API socket at $sock"
[ "$(stat -c %a "$sock")" = 600 ] || die "socket mode $(stat -c %a "$sock"), want 600"
say "OK socket 0600"
r info | grep -q '"state": "Running"' || die "info does not say Running: $(r info)"
say "OK info"
r counters | grep -Eq '^counter translations [1-9]' || die "no translations counted"
say "OK counters"
r counters --json | grep -q '"translations"' || die "counters --json has no translations"
state=$(r iommu-state) || die "iommu-state failed"
echo "$state" | sed 's/^/API-STATE /'
echo "$state" | grep -q 'translation_type: first-stage' || die "no first-stage PASID entry in the state"
r iommu-state --json | grep -q '"rid_pasid_entry"' || die "iommu-state --json has no PASID entry"
echo "$state" | awk '/^interrupt_remapping:/ { s = 1; next } s && /^[^ ]/ { s = 0 }
    s && /^  enabled: yes$/ { f = 1 } END { exit !f }' ||
    die "iommu-state does not show interrupt remapping enabled"
say "OK iommu-state"
pid=$(pidof vtd-nest) || die "no vtd-nest process to signal"
kill -USR1 $pid || die "cannot send SIGUSR1 to $pid"
say "OK SIGUSR1"
r pause || die "pause failed"
r info | grep -q '"state": "Paused"' || die "info does not say Paused"
a=$(serial); sleep 3; b=$(serial)
[ -n "$a" ] && [ "$a" = "$b" ] || die "the paused guest still printed ($a, then $b bytes)"
say "OK pause ($a bytes stand still)"
r pause 2>/dev/null && die "a second pause was accepted"
r resume || die "resume failed"
i=0
while [ "$(serial)" = "$b" ]; do
    i=$((i + 1)); [ "$i" -le 30 ] || die "the resumed guest printed nothing in 30 s"; sleep 1
done
say "OK resume"
err=$(r add-disk path=/nonexistent.img 2>&1) && die "add-disk of a missing file succeeded"
echo "$err" | grep -q 'Cannot open the disk image' || die "add-disk: $err"
err=$(r remove-device nodisk 2>&1) && die "remove-device of an unknown id succeeded"
echo "$err" | grep -q "This VM has no device 'nodisk'" || die "remove-device: $err"
say "OK refusals"
r shutdown || die "shutdown failed"
i=0
while [ -e "$sock" ]; do
    i=$((i + 1)); [ "$i" -le 30 ] || die "the socket is still there 30 s after shutdown"; sleep 1
done
say "OK shutdown, socket removed"
i=0
until grep -q '"translations":[1-9]' "$counters" 2>/dev/null; do
    i=$((i + 1)); [ "$i" -le 30 ] || die "no translations in the --counters file $counters"; sleep 1
done
say "OK --counters file"
grep -q 'vmm::running: API request Pause: Ok' "$log" || die "the --log-file has no vmm::running line for the pause: $(tail -n 3 "$log")"
grep -q 'DEBUG\|TRACE' "$log" && die "the --log-file has lines beyond the directives"
say "OK --log-file with targets"
say "DONE"
SIDE
}

check() {
    side_ran API "$1" &&
        require '^API-GUEST-READY' "the guest never got to its ready mark" &&
        { ! grep -m1 '^counter ' "$OUT" || return 1; } &&
        require '^translation:$' "SIGUSR1 wrote no vIOMMU state to stderr" &&
        disk_hash_matches d0 && cap_matches
}
