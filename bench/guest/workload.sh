# shellcheck shell=sh
# bench/guest/workload.sh: the guest side of bench/compare (busybox sh; runs as the L2 guest's
# /e2e-init after e2e/lib/l2-init has mounted /proc, /sys, /dev and loaded virtio_blk).
#
# Set by bench/compare in front of this file: BENCH_IDLE=1 skips the disk workload (the same
# guest, boot and probes only: the baseline per-I/O VMM counters are taken against);
# BENCH_REPEAT=N runs the three phases N times in turn (one BENCH-PHASE line per run);
# BENCH_DISK=NAME the disk to use (e.g. nvme0n1, an assigned NVMe; waited for up to 10 s),
# default the first virtio disk.
#
# Lines it prints (parsed by harness/vtdharness/console.py, for bench/compare's report):
#   BENCH-BOOT <s>            kernel timestamp of "Run /init as init process" (dmesg), i.e. L2
#                             uptime when /init started; "-" if the line is missing
#   BENCH-READY <s>           /proc/uptime when this script starts (modules loaded, disk found)
#   BENCH-CLOCK <name>        the guest's clocksource (timing quality)
#   BENCH-TIMER <source>      where phase times come from: timer_list (ns) or uptime (10 ms)
#   BENCH-IOMMU <domain>      default domain type of the disk's IOMMU group, or "none"
#   BENCH-CAP <cap> <ecap>    the vIOMMU's capability registers as the guest sees them
#   BENCH-PHASE <name> <seconds> <requests> <interrupts> <bytes> <maps>
#                             one run of a disk phase: elapsed time, block requests completed (from
#                             /sys/block/X/stat), interrupts delivered (sum of /proc/interrupts),
#                             DMA mappings the guest made (the kernel's dma:dma_map_page trace
#                             event; "-" without tracefs): one per physically contiguous buffer
#                             piece, so a 1 MiB read maps anything from a few to 260 pieces
#                             depending on how fragmented the guest's dd buffer happens to be
#   BENCH-DMATIME <requests> <map calls> <map µs> <unmap calls> <unmap µs> <flush calls> <flush µs>
#                             the guest's own time in the DMA API during an extra, traced run
#                             of DMATIME_READS 4 KiB reads after the timed phases (ftrace's
#                             function_graph on dma_map_page_attrs, dma_unmap_page_attrs and
#                             the lazy flush queue's timer fq_flush_timeout): the guest side of
#                             the vIOMMU's cost; in strict mode the unmap time holds the
#                             invalidation's VM exit. Missing without function_graph.
#   BENCH-FAIL <what>         something went wrong; the script exits 1
#   BENCH-DONE                everything ran
set -u

fail() {
    echo "BENCH-FAIL $*"
    exit 1
}

# Monotonic time in seconds: nanoseconds from /proc/timer_list, else /proc/uptime (10 ms).
now() {
    if [ "$TIMER" = timer_list ]; then
        awk '/^now at/ { printf "%.6f\n", $3 / 1e9; exit }' /proc/timer_list
    else
        cut -d' ' -f1 /proc/uptime
    fi
}

pick_timer() {
    TIMER=uptime
    if awk '/^now at/ { found = 1 } END { exit !found }' /proc/timer_list 2>/dev/null; then
        TIMER=timer_list
    fi
    echo "BENCH-TIMER $TIMER"
}

report_boot() {
    boot=$(dmesg | sed -n 's/^\[ *\([0-9.]*\)\] Run \/init as init process.*/\1/p' | head -n1)
    echo "BENCH-BOOT ${boot:--}"
    echo "BENCH-READY $(cut -d' ' -f1 /proc/uptime)"
    echo "BENCH-CLOCK $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
}

# BENCH_DISK, or the first virtio disk, e.g. vda.
find_disk() {
    if [ -n "${BENCH_DISK:-}" ]; then
        i=0
        until [ -b "/dev/$BENCH_DISK" ] && [ -r "/sys/block/$BENCH_DISK/stat" ]; do
            [ "$i" -lt 100 ] || fail "no disk /dev/$BENCH_DISK in the guest after 10 s"
            sleep 0.1
            i=$((i + 1))
        done
        DISK=$BENCH_DISK
        return 0
    fi
    for b in /sys/block/vd*; do
        [ -e "$b" ] && { DISK=${b##*/}; return 0; }
    done
    fail "no virtio disk in the guest"
}

report_cap() {
    d=/sys/class/iommu/dmar0/intel-iommu
    if [ -r "$d/cap" ]; then echo "BENCH-CAP $(cat "$d/cap") $(cat "$d/ecap")"; fi
}

# The disk's PCI function holds the IOMMU group: the virtio device's parent, or the NVMe
# namespace's controller's device.
report_iommu() {
    case "$DISK" in
        nvme*n*) c=${DISK#nvme}; grp=/sys/class/nvme/nvme${c%%n*}/device/iommu_group ;;
        *) grp=/sys/block/$DISK/device/../iommu_group ;;
    esac
    if [ -e "$grp" ]; then
        g=$(readlink -f "$grp")
        echo "BENCH-IOMMU $(cat "/sys/kernel/iommu_groups/${g##*/}/type")"
    else
        echo "BENCH-IOMMU none"
    fi
}

# Block requests completed so far (reads + writes) on the disk.
requests() {
    awk '{ print $1 + $5 }' "/sys/block/$DISK/stat"
}

# Interrupts delivered so far, all sources.
interrupts() {
    awk 'NR > 1 { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print s + 0 }' \
        /proc/interrupts
}

TRACE=/sys/kernel/tracing
# Count DMA mappings with the dma:dma_map_page trace event, when the kernel has it (a few
# hundred instructions per mapping, the same in every configuration).
setup_maps() {
    MAPS=0
    if [ -w "$TRACE/events/dma/dma_map_page/enable" ]; then
        echo 8192 >"$TRACE/buffer_size_kb" && echo 0 >"$TRACE/tracing_on" &&
            echo 1 >"$TRACE/events/dma/dma_map_page/enable" && MAPS=1
    fi
}

maps_start() {
    [ "$MAPS" = 1 ] || return 0
    echo >"$TRACE/trace"
    echo 1 >"$TRACE/tracing_on"
}

maps_count() {
    if [ "$MAPS" = 1 ]; then
        echo 0 >"$TRACE/tracing_on"
        grep -c 'dma_map_page:' "$TRACE/trace"
    else
        echo -
    fi
}

DMATIME_READS=1024

# dma_time: one traced run of 4 KiB reads, then the BENCH-DMATIME line. The timed phases are
# over (and untraced) by then; only these functions are traced, so other code runs as before.
dma_time() {
    grep -qw function_graph "$TRACE/available_tracers" 2>/dev/null || return 0
    funcs=""
    for f in dma_map_page_attrs dma_unmap_page_attrs fq_flush_timeout; do
        awk -v f="$f" '$1 == f { found = 1; exit } END { exit !found }' \
            "$TRACE/available_filter_functions" && funcs="$funcs $f"
    done
    [ -n "$funcs" ] || return 0
    echo 0 >"$TRACE/tracing_on"
    [ "$MAPS" = 1 ] && echo 0 >"$TRACE/events/dma/dma_map_page/enable"
    echo "$funcs" >"$TRACE/set_ftrace_filter" && echo function_graph >"$TRACE/current_tracer" ||
        return 0
    # Name the function on the closing line of a call that something else interrupted.
    echo 1 >"$TRACE/options/funcgraph-tail" 2>/dev/null
    echo >"$TRACE/trace"
    r0=$(requests)
    echo 1 >"$TRACE/tracing_on"
    dd if="/dev/$DISK" of=/dev/null bs=4k count=$DMATIME_READS skip=4096 iflag=direct \
        2>/tmp/dd.err || fail "dma time: dd: $(tail -n1 /tmp/dd.err)"
    echo 0 >"$TRACE/tracing_on"
    r1=$(requests)
    # A call is "name();" with its duration on the same line, or "} /* name */" closing one
    # that something interrupted; the duration is the number before "us" (after a +, !, #
    # marker when long).
    awk -v reqs=$((r1 - r0)) '
        / us / {
            d = ""
            for (i = 2; i <= NF; i++) if ($i == "us") d = $(i - 1)
            if (d == "") next
            f = ""
            if ($0 ~ /dma_map_page_attrs/) f = "map"
            else if ($0 ~ /dma_unmap_page_attrs/) f = "unmap"
            else if ($0 ~ /fq_flush_timeout/) f = "flush"
            if (f == "" || ($0 ~ /\{ *$/)) next
            n[f]++; t[f] += d
        }
        END {
            printf "BENCH-DMATIME %d %d %.1f %d %.1f %d %.1f\n", reqs, n["map"], t["map"],
                n["unmap"], t["unmap"], n["flush"], t["flush"]
        }' "$TRACE/trace"
    echo nop >"$TRACE/current_tracer"
    echo >"$TRACE/set_ftrace_filter"
}

# phase NAME BYTES DD-ARGS...: time one dd run and print its BENCH-PHASE line.
phase() {
    name=$1 bytes=$2
    shift 2
    maps_start
    r0=$(requests) i0=$(interrupts) t0=$(now)
    dd "$@" 2>/tmp/dd.err || fail "$name: dd $*: $(tail -n1 /tmp/dd.err)"
    t1=$(now) r1=$(requests) i1=$(interrupts)
    maps=$(maps_count)
    echo "BENCH-PHASE $name $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }') \
$((r1 - r0)) $((i1 - i0)) $bytes $maps"
}

workload() {
    dev=/dev/$DISK
    n=0
    while [ "$n" -lt "${BENCH_REPEAT:-1}" ]; do
        phase read4k $((4096 * 4096)) if="$dev" of=/dev/null bs=4k count=4096 iflag=direct
        phase read1m $((64 << 20)) if="$dev" of=/dev/null bs=1M count=64 iflag=direct
        phase write64k $((256 << 16)) if=/dev/zero of="$dev" bs=64k count=256 oflag=direct
        n=$((n + 1))
    done
    sync
}

report_boot
pick_timer
report_cap
find_disk
report_iommu
if [ "${BENCH_IDLE:-0}" != 1 ]; then setup_maps; workload; dma_time; fi
echo "BENCH-DONE"
