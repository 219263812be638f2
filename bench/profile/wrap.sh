# shellcheck shell=bash
# bench/profile/wrap.sh: the wrapper every bench/profile job's VMM command runs through, inside
# L1 (or on this host in direct mode); run as `sh run.sh DIR VMM_COMMAND...` from the
# self-extracting pack (bench/lib/pack.sh) that also holds perf, its libraries and the loader
# (DIR/lib), and vtd-nest with its symbols. bench/profile puts "WINDOW_S=<s>" in front of it.
# Records every CPU for WINDOW_S seconds from the guest's PROFILE-START line, then prints the
# reports as PROFILE-WINDOW, PROFILE-THREAD;... and PROFILE-SYMBOL;... lines.
set -o pipefail
d="$1"; shift
perf() { "$d/lib/ld.so" --library-path "$d/lib" "$d/perf" "$@"; }
# The same VMM, but with its symbols (L1 gets a stripped copy).
for a; do
    shift
    if [ "$a" = /bin/vtd-nest ] && [ -x "$d/vtd-nest" ]; then a="$d/vtd-nest"; fi
    set -- "$@" "$a"
done
# On CPU 1, if the batch did not pin it already (direct mode).
[ "$1" = taskset ] || set -- taskset -c 1 "$@"
# Kernel symbols and system-wide sampling, for the run only.
kptr=$(cat /proc/sys/kernel/kptr_restrict)
paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)
echo 0 >/proc/sys/kernel/kptr_restrict
echo -1 >/proc/sys/kernel/perf_event_paranoid
mkfifo "$d/control"
# perf itself, not a shell function: $! must be perf, and SIGINT is ignored by background jobs.
"$d/lib/ld.so" --library-path "$d/lib" "$d/perf" record -q -a -F 1000 -D -1 \
    --control "fifo:$d/control" -o "$d/perf.data" >"$d/perf.log" 2>&1 &
perf_pid=$!
exec 3>"$d/control"
"$@" | {
    while IFS= read -r line; do
        printf '%s\n' "$line"
        case "$line" in
            *PROFILE-START*) echo enable >&3; (sleep "$WINDOW_S"; echo disable >&3) & ;;
        esac
    done
    wait
}
rc=$?
kill -TERM "$perf_pid"
wait "$perf_pid"
report() { perf report -q -n -t ';' -i "$d/perf.data" --stdio --no-children "$@" 2>/dev/null; }
echo "PROFILE-WINDOW $WINDOW_S"
report --sort cpu,comm,dso | sed 's/^/PROFILE-THREAD;/'
report --cpu 1 --sort comm,dso,sym --percent-limit 0.3 | sed 's/^/PROFILE-SYMBOL;/'
echo "$kptr" >/proc/sys/kernel/kptr_restrict
echo "$paranoid" >/proc/sys/kernel/perf_event_paranoid
exit $rc
