# shellcheck shell=bash
# bench/lib/pack.sh: a directory as one self-extracting program, for tools that run their own
# code where the benchmarks' guests run (as e2e's VMM: VTD_NEST_BIN for e2e/run, or the
# wrapper of bench/profile's jobs).
#
#   self_extracting DIR OUT   OUT: a shell script that unpacks DIR into a fresh temporary
#                             directory D and runs `sh D/run.sh D ARGS...` with its own ARGS
self_extracting() {
    local dir="$1" out="$2"
    {
        # shellcheck disable=SC2016 # expanded when OUT runs
        printf '#!/bin/sh\nn=$(awk %s "$0")\nd=$(mktemp -d)\ntail -n +"$n" "$0" | tar x -C "$d" || exit 125\n' \
            "'/^__PAYLOAD__\$/ { print NR + 1; exit }'"
        # shellcheck disable=SC2016
        printf 'exec sh "$d/run.sh" "$d" "$@"\n__PAYLOAD__\n'
        tar c -C "$dir" .
    } >"$out"
    chmod +x "$out"
}
