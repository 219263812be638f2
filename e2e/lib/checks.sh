# shellcheck shell=bash
# e2e/lib/checks.sh: host-side assertions on one job's output (the file in $OUT). Each check
# prints why it failed and returns 1, or returns 0 silently; the suite reports the first reason.

# The job ran, the guest reached its init, every guest check passed and the guest's script
# ended with status 0.
guest_ran() {
    local status="$1" failed
    case "$status" in
        timeout) echo "the VMM timed out$(vmm_said)"; return 1 ;;
        missing) echo "the VMM never reported an exit status (L1 died or timed out)"; return 1 ;;
    esac
    if ! grep -q '^E2E-GUEST-START' "$OUT"; then
        echo "the guest never reached its init (VMM exit status $status$(vmm_said))"
        return 1
    fi
    failed="$(grep -m1 -o 'CHECK-FAIL .*' "$OUT" || true)"
    if [ -n "$failed" ]; then echo "guest: ${failed#CHECK-FAIL }"; return 1; fi
    if ! grep -q '^E2E-GUEST-EXIT 0' "$OUT"; then
        echo "the guest's script did not finish (no E2E-GUEST-EXIT 0)"
        return 1
    fi
    if [ "$status" != 0 ]; then echo "the VMM exited with status $status after the guest ran"; return 1; fi
}

# guest_kernel_is TAG: the guest's "GUEST-KERNEL <release>" line names the kernel e2e/prepare
# unpacked for TAG (its kver file), so the scenario really booted that kernel.
guest_kernel_is() {
    local want got
    want="$(cat "$(l2_dir "$1")/kver" 2>/dev/null)" || true
    got="$(grep -m1 '^GUEST-KERNEL ' "$OUT" | cut -d' ' -f2)" || true
    [ -n "$want" ] || { echo "no kver for guest kernel $1 in $E2E_CACHE"; return 1; }
    if [ "$got" != "$want" ]; then
        echo "the guest ran kernel '${got:-?}', want $want (guest kernel $1)"
        return 1
    fi
}

# ": <last line the VMM printed>" for failure messages, if it printed anything.
vmm_said() {
    local last
    last="$(grep -Ev '^(VTD-NEST-|HOST-DISK |e2e-l1: |Killed$|[[:space:]]*$)' "$OUT" | tail -n1 | cut -c1-160)"
    if [ -n "$last" ]; then printf '; last output: %s' "$last"; fi
}

# require EXTENDED_REGEX WHY
require() {
    if ! grep -Eq "$1" "$OUT"; then echo "$2"; return 1; fi
}

# The guest's final disk hash equals the host's hash of the very same image.
disk_hash_matches() {
    local name="$1" guest host
    guest="$(grep "^GUEST-DISK $name " "$OUT" | tail -n1 | cut -d' ' -f3)"
    host="$(grep "^HOST-DISK $name " "$OUT" | tail -n1 | cut -d' ' -f3)"
    [ -n "$guest" ] || { echo "the guest printed no hash of disk $name"; return 1; }
    [ -n "$host" ] || { echo "no host hash of disk $name"; return 1; }
    if [ "$guest" != "$host" ]; then
        echo "disk $name: guest sha256 $guest != host sha256 $host"
        return 1
    fi
}

# Normalise a hex number: lower case, no 0x, no leading zeros.
hexnorm() {
    local h="${1,,}"
    h="${h#0x}"
    h="${h##+(0)}"
    echo "${h:-0}"
}

# The guest's cap/ecap equal what the VMM reported ("VTD cap=<hex> ecap=<hex>").
cap_matches() {
    local vmm guest vcap vecap gcap gecap
    shopt -s extglob
    vmm="$(grep -Eo 'VTD cap=(0x)?[0-9a-fA-F]+ ecap=(0x)?[0-9a-fA-F]+' "$OUT" | head -n1)"
    guest="$(grep -m1 '^GUEST-CAP ' "$OUT" || true)"
    [ -n "$vmm" ] || { echo "the VMM printed no 'VTD cap=<hex> ecap=<hex>' line"; return 1; }
    [ -n "$guest" ] || { echo "the guest printed no GUEST-CAP line"; return 1; }
    vcap="$(hexnorm "$(echo "$vmm" | sed -E 's/.*cap=([^ ]+) .*/\1/')")"
    vecap="$(hexnorm "$(echo "$vmm" | sed -E 's/.*ecap=([^ ]+).*/\1/')")"
    gcap="$(hexnorm "$(echo "$guest" | cut -d' ' -f2)")"
    gecap="$(hexnorm "$(echo "$guest" | cut -d' ' -f3)")"
    if [ "$vcap" != "$gcap" ] || [ "$vecap" != "$gecap" ]; then
        echo "guest sees cap=$gcap ecap=$gecap, the VMM reported cap=$vcap ecap=$vecap"
        return 1
    fi
}

# counter NAME: the value of "counter <NAME> <value>" from the VMM's exit summary (empty if none).
counter() {
    grep -E "^counter $1 [0-9]+\s*$" "$OUT" | tail -n1 | awk '{print $3}'
}

# counter_is NAME OP VALUE (OP: -gt, -eq, ...)
counter_is() {
    local v
    v="$(counter "$1")"
    [ -n "$v" ] || { echo "the VMM's summary has no 'counter $1 <value>' line"; return 1; }
    if ! test "$v" "$2" "$3"; then echo "counter $1 is $v, want $2 $3"; return 1; fi
}

# vmm_refused STATUS REGEX: the VMM refused to start (a non-zero exit, before any guest booted),
# saying something that matches REGEX. vtd-nest must exit 2 with one sentence (one non-empty
# line besides the harness's markers and L1's own lines); QEMU (--inner qemu) exits 1.
vmm_refused() {
    local status="$1" regex="$2" said lines want=2
    case "$status" in
        timeout) echo "the VMM timed out instead of refusing$(vmm_said)"; return 1 ;;
        missing) echo "the VMM never reported an exit status (L1 died or timed out)"; return 1 ;;
        0) echo "the VMM exited with status 0 instead of refusing"; return 1 ;;
    esac
    if grep -q '^E2E-GUEST-START' "$OUT"; then echo "a guest started (status $status)"; return 1; fi
    said="$(grep -Ev '^(VTD-NEST-|HOST-DISK |e2e-l1: |[[:space:]]*$)' "$OUT" || true)"
    if ! grep -Eq "$regex" <<<"$said"; then
        echo "the VMM's message does not match /$regex/: $(head -c 200 <<<"$said" | tr '\n' '|')"
        return 1
    fi
    [ "$INNER" = qemu ] && want=1
    if [ "$status" != "$want" ]; then echo "the VMM exited with status $status, want $want"; return 1; fi
    if [ "$INNER" != qemu ]; then
        lines="$(grep -c . <<<"$said")"
        if [ "$lines" != 1 ]; then
            echo "want one sentence, the VMM printed $lines lines: $(head -c 200 <<<"$said" | tr '\n' '|')"
            return 1
        fi
    fi
}
