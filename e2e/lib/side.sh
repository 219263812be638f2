# shellcheck shell=bash
# e2e/lib/side.sh: what the scenarios with a side script (a sh script run next to the VMM while
# the guest runs, given the VMM command as its arguments; see e2e/lib/l1-init) share. Sourced by
# e2e/lib/scenario.sh.
#
#   side_prelude PREFIX N   prints the script's start: vmm=$1, mark = the value of the Nth
#                           --disk path= that is not a /sys device (the disk the guest writes its
#                           marks on), say (PREFIX-SIDE-...), die, r (vtd-nest remote on $sock),
#                           wait_mark TEXT SECONDS
#   side_ran PREFIX STATUS  the host-side checks every such scenario makes: the VMM exited 0, the
#                           guest started and no check failed, the side script finished without a
#                           failure, and the VMM was shut down through the API

side_prelude() {
    cat <<SIDE
vmm=\$1
n=0 mark=""
for a in "\$@"; do
    case "\$a" in
    path=/sys/*) ;;
    path=*) n=\$((n + 1)); [ "\$n" = $2 ] && { mark=\${a#path=}; mark=\${mark%%,*}; } ;;
    esac
done
say() { echo "$1-SIDE-\$*"; }
SIDE
    cat <<'SIDE'
die() { say "FAIL $*"; exit 1; }
r() { "$vmm" remote --api-socket "$sock" "$@"; }
wait_mark() {
    i=0
    until dd if="$mark" bs=512 count=1 iflag=direct 2>/dev/null | grep -q "$1"; do
        i=$((i + 1)); [ "$i" -le "$2" ] || die "the guest never wrote $1"; sleep 1
    done
}
[ -n "$mark" ] || die "no mark disk in the VMM command"
SIDE
}

side_ran() {
    [ "$2" = 0 ] || { echo "the VMM exited with status $2$(vmm_said)"; return 1; }
    require '^E2E-GUEST-START' "the guest never reached its init" &&
        { ! grep -m1 'CHECK-FAIL' "$OUT" || return 1; } &&
        { ! grep -m1 "^$1-SIDE-FAIL" "$OUT" || return 1; } &&
        require "^$1-SIDE-DONE" "the side script did not finish" &&
        require '^VTD-NEST-SIDE-EXIT 0' "the side script failed" &&
        require 'vtd-nest: shut down through the API' "the VMM did not say it was shut down"
}
