# shellcheck shell=bash
# e2e/lib/checks.sh: host-side assertions on one job's output (the file in $OUT), for the
# scenarios' check functions. Each check prints why it failed and returns 1, or returns 0
# silently; the suite reports the first reason. The markers are read by the harness: each call
# is a request to the suite (harness/vtdharness/checks.py, over console.py), which answers over
# the pipes $E2E_CHECK_REQUESTS and $E2E_CHECK_ANSWERS; require is a plain search of the output.
#
#   guest_ran STATUS              the guest reached its init, every guest check passed, its script
#                                 ended with 0 and so did the VMM
#   guest_kernel_is TAG           the guest's GUEST-KERNEL line names kernel TAG's release
#   disk_hash_matches NAME        GUEST-DISK NAME equals HOST-DISK NAME
#   cap_matches                   the guest's GUEST-CAP equals the VMM's "VTD cap=.. ecap=.."
#   counter NAME                  prints the value of the VMM's "counter NAME <value>" line
#   counter_is NAME OP VALUE      that value compared with test(1)'s OP (-gt, -eq, ...)
#   vmm_refused STATUS REGEX      the VMM refused to start, in one sentence matching REGEX
#   vmm_said                      "; last output: <the VMM's last line>", for messages
#   require EXTENDED_REGEX WHY    a line of the output matches

# vtd_check NAME ARGS...: one request (fields separated by US, 0x1f), one answer line: the
# status, US, and what the check prints.
vtd_check() {
    local IFS=$'\x1f' reply
    if [ -z "${E2E_CHECK_REQUESTS:-}" ]; then
        echo "$1: not run by the harness (no check pipes)"
        return 2
    fi
    printf '%s\n' "$*" >&"$E2E_CHECK_REQUESTS"
    IFS= read -r reply <&"$E2E_CHECK_ANSWERS" || { echo "$1: the harness did not answer"; return 2; }
    [ -z "${reply#*$'\x1f'}" ] || printf '%s\n' "${reply#*$'\x1f'}"
    return "${reply%%$'\x1f'*}"
}

guest_ran() { vtd_check guest_ran "$@"; }
guest_kernel_is() { vtd_check guest_kernel_is "$@"; }
disk_hash_matches() { vtd_check disk_hash_matches "$@"; }
cap_matches() { vtd_check cap_matches "$@"; }
counter() { vtd_check counter "$@"; }
counter_is() { vtd_check counter_is "$@"; }
vmm_refused() { vtd_check vmm_refused "$@"; }
vmm_said() { vtd_check vmm_said "$@"; }

require() {
    if ! grep -Eq "$1" "$OUT"; then echo "$2"; return 1; fi
}
