# shellcheck shell=bash
# e2e/lib/batch.sh: a batch of VMM jobs, each booting one L2 guest, run either directly on this
# host's /dev/kvm or all inside one L1 QEMU-TCG machine. Sourced by e2e/run and e2e/suite.
#
#   batch_init WORKDIR
#   batch_add NAME INNER INIT_SCRIPT TIMEOUT "DISK=SIZE ..." [--vfio NAME=SIZE]...
#             [--vfio-modules container|iommufd] -- CALLER_ARGS...
#                                     INNER is vtd-nest or qemu; --vfio gives the job a real PCI
#                                     device in L1 (an emulated NVMe disk of SIZE, bound to
#                                     vfio-pci), "@NAME" in CALLER_ARGS becomes its sysfs path
#                                     /sys/bus/pci/devices/0000:00:NN.0; --vfio-modules is the
#                                     VFIO module set L1 loads before the job (default container)
#   batch_launch MODE [live]          MODE is auto, direct or nested; live streams the console
#   batch_result INDEX                prints "<status>" (a number, "timeout" or "missing")
#   batch_disks INDEX                 prints "HOST-DISK <name> <sha256>" per disk and per real
#                                     device (the NVMe's backing image)
#   VTD_NEST_E2E_L1_IOMMU             L1's emulated VT-d: auto (default: legacy mode when a job
#                                     has a real device, none otherwise), off, legacy, scalable
#   BATCH_PIN=CPUS (after batch_init) runs every nested job's VMM under `taskset -c CPUS` in L1
#                                     (bench/compare: steadier timings, see docs/benchmarks.md)
#   BATCH_WRAP=FILE (after batch_init) an executable put in front of every job's command (after
#                                     the taskset), copied into L1 when nested: it gets the
#                                     VMM command as its arguments (bench/profile: perf)
#   BATCH_KERNEL=TAG (before batch_add) the L2 kernel of the jobs added from then on: empty or
#                                     6.12 (default, l2/), or one of GUEST_KERNEL_TAGS
#                                     (common.sh: 5.10, 6.1, newest; l2-<tag>/)
#
# Job directory WORKDIR/jobs/NN: name, inner, init, timeout, kernel (the L2 kernel's tag, empty
# for 6.12), disks ("name index file size" lines), vfio (the same for real devices),
# vfio-modules, side (batch_add --side FILE: a sh script run next to the VMM, in L1 or on the
# host, given the VMM command as its arguments; see l1-init), callargs (caller's arguments, one per line, "@NAME" already turned into
# @@E2EDISK<index>@@ or @@E2EVFIO<index>@@), and after the launch: initrd, output (its console
# section) and status.
#
# The console log uses these markers (from e2e/lib/l1-init, or from this file in direct mode):
#   VTD-NEST-JOB <name> / VTD-NEST-TIMEOUT <s> / VTD-NEST-EXIT <status> / VTD-NEST-L1-DONE

E2E_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$E2E_LIB/../.." && pwd)"
# shellcheck source=e2e/lib/common.sh
. "$E2E_LIB/common.sh"

# The console part of every L2 kernel command line: quiet, because every byte on the emulated
# UART is a VM exit, and a panic ends the run instead of hanging until the timeout.
L2_CONSOLE="console=ttyS0 quiet panic=-1"
# L1 prints only emergencies: its kernel messages would land in the middle of the jobs' lines.
L1_APPEND="console=ttyS0 quiet loglevel=1 panic=-1"
# EPYC minus the features TCG lacks anyway (naming them keeps QEMU from warning about each).
L1_CPU=EPYC,fxsr-opt=off,misalignsse=off,osvw=off,topoext=off,nrip-save=off,xsavec=off
L1_QEMU=(qemu-system-x86_64 -accel tcg -cpu "$L1_CPU" -m 2G -smp 2 -nographic -no-reboot -nic none)
# L1's emulated VT-d for real devices (see ../shared/reference/real-vfio-in-l1.md): caching mode,
# so QEMU shadows L1's second-stage tables; interrupt remapping, so VFIO's MSI is isolated.
L1_VIOMMU=intel-iommu,intremap=on,caching-mode=on
# Real devices sit at fixed slots of L1's bus 0 (so their address is known before boot):
# 0000:00:10.0 for index 0, and so on up to 0000:00:1b.0.
L1_VFIO_SLOT0=16
L1_VFIO_MAX=12
# Seconds L1 may spend outside the jobs (boot, disk discovery, power-off).
L1_OVERHEAD=120

batch_init() {
    BATCH="$1"
    BATCH_NJOBS=0
    BATCH_NDISKS=0
    BATCH_NVFIO=0
    BATCH_PIN=""
    BATCH_WRAP=""
    BATCH_KERNEL=""
    mkdir -p "$BATCH/jobs" "$BATCH/disks"
}

# l2_dir TAG: the cache directory of an L2 kernel (vmlinuz, base.cpio) by its tag.
l2_dir() {
    case "$1" in
        "" | 6.12) echo "$E2E_CACHE/l2" ;;
        *) echo "$E2E_CACHE/l2-$1" ;;
    esac
}

# The L2 kernel of job directory DIR, as L1 sees it (l1_initrd puts each one there).
l1_kernel_path() {
    local tag
    tag="$(cat "$1/kernel")"
    if [ -z "$tag" ]; then echo /l2/vmlinuz; else echo "/l2-$tag/vmlinuz"; fi
}

batch_job_dir() {
    printf '%s/jobs/%02d' "$BATCH" "$1"
}

# substitute_placeholders ARG NAME=TOKEN...: "@NAME" -> TOKEN for the listed names only.
substitute_placeholders() {
    local arg="$1" out="" name map idx
    shift
    while [[ "$arg" =~ ^([^@]*)@([A-Za-z0-9_]+)(.*)$ ]]; do
        out+="${BASH_REMATCH[1]}"
        name="${BASH_REMATCH[2]}"
        arg="${BASH_REMATCH[3]}"
        idx=""
        for map in "$@"; do
            if [ "${map%%=*}" = "$name" ]; then idx="${map#*=}"; fi
        done
        if [ -n "$idx" ]; then out+="$idx"; else out+="@$name"; fi
    done
    printf '%s' "$out$arg"
}

# vfio_bdf INDEX: the PCI address of real device INDEX in L1.
vfio_bdf() {
    printf '0000:00:%02x.0' $((L1_VFIO_SLOT0 + $1))
}

batch_add() {
    local name="$1" inner="$2" init="$3" timeout="$4" disks="$5" dir spec dname size maps=() a
    local vfio=() modules=container side=""
    shift 5
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        case "$1" in
            --vfio) vfio+=("${2:?--vfio needs NAME=SIZE}"); shift 2 ;;
            --vfio-modules) modules="${2:?--vfio-modules needs container or iommufd}"; shift 2 ;;
            --side) side="${2:?--side needs a script}"; shift 2 ;;
            *) die "batch_add: unknown option $1" ;;
        esac
    done
    [ "${1:-}" = "--" ] && shift
    [ -f "$init" ] || die "guest init script $init does not exist"
    case "$modules" in container | iommufd) ;; *) die "unknown VFIO module set $modules (container or iommufd)" ;; esac
    case "$inner" in vtd-nest | qemu) ;; *) die "unknown inner VMM $inner" ;; esac
    dir="$(batch_job_dir "$BATCH_NJOBS")"
    mkdir -p "$dir"
    echo "$name" >"$dir/name"
    echo "$inner" >"$dir/inner"
    echo "$timeout" >"$dir/timeout"
    [ "$BATCH_KERNEL" != 6.12 ] || BATCH_KERNEL=""
    if [ -n "$BATCH_KERNEL" ] && [[ " $GUEST_KERNEL_TAGS " != *" $BATCH_KERNEL "* ]]; then
        die "unknown guest kernel $BATCH_KERNEL (6.12 or one of: $GUEST_KERNEL_TAGS)"
    fi
    echo "$BATCH_KERNEL" >"$dir/kernel"
    cp "$init" "$dir/init"
    [ -z "$side" ] || cp "$side" "$dir/side"
    : >"$dir/disks"
    for spec in $disks; do
        dname="${spec%%=*}"
        size="${spec#*=}"
        [[ "$dname" =~ ^[A-Za-z0-9_]+$ && "$spec" == *=* && -n "$size" ]] ||
            die "bad disk '$spec' (want NAME=SIZE, e.g. d0=64M)"
        echo "$dname $BATCH_NDISKS $BATCH/disks/$(basename "$dir")-$dname.img $size" >>"$dir/disks"
        maps+=("$dname=@@E2EDISK${BATCH_NDISKS}@@")
        BATCH_NDISKS=$((BATCH_NDISKS + 1))
    done
    : >"$dir/vfio"
    for spec in "${vfio[@]}"; do
        dname="${spec%%=*}"
        size="${spec#*=}"
        [[ "$dname" =~ ^[A-Za-z0-9_]+$ && "$spec" == *=* && -n "$size" ]] ||
            die "bad real device '$spec' (want NAME=SIZE, e.g. vfio0=16M)"
        [ "$BATCH_NVFIO" -lt "$L1_VFIO_MAX" ] || die "at most $L1_VFIO_MAX real devices per batch"
        echo "$dname $BATCH_NVFIO $BATCH/disks/$(basename "$dir")-$dname.img $size" >>"$dir/vfio"
        maps+=("$dname=@@E2EVFIO${BATCH_NVFIO}@@")
        BATCH_NVFIO=$((BATCH_NVFIO + 1))
    done
    if [ "${#vfio[@]}" -gt 0 ]; then echo "$modules" >"$dir/vfio-modules"; fi
    : >"$dir/callargs"
    for a in "$@"; do
        [[ "$a" != *$'\n'* ]] || die "VMM arguments may not contain newlines"
        substitute_placeholders "$a" "${maps[@]}" >>"$dir/callargs"
        echo >>"$dir/callargs"
    done
    BATCH_NJOBS=$((BATCH_NJOBS + 1))
}

# Fresh sparse disk images for every job.
create_disks() {
    local dir dname idx file size
    for dir in "$BATCH"/jobs/*; do
        while read -r dname idx file size; do
            rm -f "$file"
            truncate -s "$size" "$file" || die "cannot create disk $dname of size $size"
        done < <(cat "$dir/disks" "$dir/vfio")
    done
}

# l2_initrd INIT OUT TAG: the base of L2 kernel TAG plus /init (the wrapper) and /e2e-init (the
# test's script).
l2_initrd() {
    local init="$1" out="$2" root
    root="$(mktemp -d)"
    install -m 0755 "$E2E_LIB/l2-init" "$root/init"
    install -m 0755 "$init" "$root/e2e-init"
    [ -s "$(l2_dir "${3:-}")/base.cpio" ] || die "no L2 base in $(l2_dir "${3:-}") (run e2e/prepare)"
    cat "$(l2_dir "${3:-}")/base.cpio" >"$out"
    cpio_of_dir "$root" "$out.extra"
    cat "$out.extra" >>"$out"
    rm -rf "$root" "$out.extra"
}

# render_command INNER VMM KERNEL INITRD CALLARGS_FILE: the full VMM command, one argument per
# line. The runner supplies kernel, initrd and the console part of the command line.
render_command() {
    local inner="$1" vmm="$2" kernel="$3" initrd="$4" file="$5" flag cmdline_seen=0 a next=0
    local args=()
    mapfile -t args <"$file"
    if [ "$inner" = qemu ]; then
        flag=-append
        printf '%s\n' "$vmm" -nographic -no-reboot -nic none -kernel "$kernel" -initrd "$initrd"
    else
        flag=--cmdline
        printf '%s\n' "$vmm" run --kernel "$kernel" --initrd "$initrd"
    fi
    for a in "${args[@]}"; do
        if [ "$next" = 1 ]; then
            printf '%s\n' "$L2_CONSOLE $a"
            next=0
        elif [ "$a" = "$flag" ]; then
            printf '%s\n' "$a"
            next=1
            cmdline_seen=1
        elif [[ "$a" == "$flag="* ]]; then
            printf '%s\n' "$flag=$L2_CONSOLE ${a#"$flag="}"
            cmdline_seen=1
        else
            printf '%s\n' "$a"
        fi
    done
    [ "$next" = 0 ] || die "$flag needs a value"
    if [ "$cmdline_seen" = 0 ]; then printf '%s\n' "$flag" "$L2_CONSOLE"; fi
}

# host_paths: replace disk placeholders by the host files (direct mode).
host_paths() {
    local line dir="$1" dname idx file size
    while IFS= read -r line; do
        while read -r dname idx file size; do
            line="${line//@@E2EDISK${idx}@@/$file}"
        done <"$dir/disks"
        printf '%s\n' "$line"
    done
}

batch_uses() {
    grep -qx "$1" "$BATCH"/jobs/*/inner
}

# The VFIO module sets the batch's jobs ask for (one per line), empty if no job has a real device.
batch_vfio_sets() {
    cat "$BATCH"/jobs/*/vfio-modules 2>/dev/null | sort -u
}

# The L1 vIOMMU mode for this batch: off, legacy or scalable.
l1_iommu_mode() {
    local want="${VTD_NEST_E2E_L1_IOMMU:-auto}"
    case "$want" in
        auto) if [ "$BATCH_NVFIO" -gt 0 ]; then echo legacy; else echo off; fi ;;
        off)
            [ "$BATCH_NVFIO" = 0 ] ||
                die "a real device needs L1's IOMMU (VTD_NEST_E2E_L1_IOMMU=off was asked for)"
            echo off ;;
        legacy | scalable) echo "$want" ;;
        *) die "VTD_NEST_E2E_L1_IOMMU wants auto, off, legacy or scalable, not $want" ;;
    esac
}

# The vtd-nest binary: $VTD_NEST_BIN, or a static release build of this repository in
# target-static/. One static build serves every place the VMM runs: directly on this host, in
# the probe, and inside L1 (which has no shared libraries).
vmm_binary() {
    local bin
    if [ -n "${VTD_NEST_BIN:-}" ]; then
        echo "$VTD_NEST_BIN"
        return
    fi
    log "building the VMM (static cargo build --release, target-static/)"
    (cd "$REPO_ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build -q --release --target x86_64-unknown-linux-gnu --target-dir target-static) >&2 ||
        die "cargo build of the static VMM failed"
    bin="$REPO_ROOT/target-static/x86_64-unknown-linux-gnu/release/vtd-nest"
    [ -x "$bin" ] || die "no VMM binary at $bin"
    echo "$bin"
}

# run_logged LIVE CMD...: run with no stdin, CR stripped, into console.log (and stdout if LIVE).
# The command's pid is kept in $BATCH/.child.pid so batch_cleanup can stop it.
run_logged() {
    local live="$1" rc
    shift
    rm -f "$BATCH/.child.rc"
    {
        "$@" </dev/null 2>&1 &
        echo "$!" >"$BATCH/.child.pid"
        rc=0
        wait "$!" || rc=$?
        # (The work directory may be gone when a trap ended the run.)
        { echo "$rc" >"$BATCH/.child.rc"; } 2>/dev/null || true
    } | sed -u -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' -e 's/\r*$//' | tee_console "$live" &
    # A background pipeline and wait: the callers' INT/TERM traps run at once, not at its end.
    wait "$!" || true
    rm -f "$BATCH/.child.pid"
    rc="$(cat "$BATCH/.child.rc" 2>/dev/null || echo 255)"
    return "$rc"
}

# Stop a command run_logged started (for the callers' EXIT/INT/TERM traps).
batch_cleanup() {
    local pid
    if [ -n "${BATCH:-}" ] && [ -f "$BATCH/.child.pid" ]; then
        pid="$(cat "$BATCH/.child.pid")"
        kill "$pid" 2>/dev/null || true
        rm -f "$BATCH/.child.pid"
    fi
}

launch_direct() {
    local live="$1" dir vmm="" cmd=() rc t kernel side
    [ "$BATCH_NVFIO" = 0 ] || die "real devices (--vfio) need nested mode: they live in L1"
    if batch_uses vtd-nest; then vmm="$(vmm_binary)"; fi
    create_disks
    for dir in "$BATCH"/jobs/*; do
        kernel="$(l2_dir "$(cat "$dir/kernel")")/vmlinuz"
        l2_initrd "$dir/init" "$dir/initrd" "$(cat "$dir/kernel")"
        if [ "$(cat "$dir/inner")" = qemu ]; then
            mapfile -t cmd < <(render_command qemu qemu-system-x86_64 "$kernel" \
                "$dir/initrd" "$dir/callargs" | host_paths "$dir")
        else
            mapfile -t cmd < <(render_command vtd-nest "$vmm" "$kernel" \
                "$dir/initrd" "$dir/callargs" | host_paths "$dir")
        fi
        [ -z "$BATCH_WRAP" ] || cmd=("$BATCH_WRAP" "${cmd[@]}")
        t="$(cat "$dir/timeout")"
        echo "VTD-NEST-JOB $(cat "$dir/name")" | tee_console "$live"
        rc=0 side=""
        if [ -f "$dir/side" ]; then
            timeout -k 5 "$((t + 30))" sh "$dir/side" "${cmd[@]}" </dev/null 2>&1 | tee_console "$live" &
            side=$!
        fi
        run_logged "$live" timeout -k 5 "$t" "${cmd[@]}" || rc=$?
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "VTD-NEST-TIMEOUT $t" | tee_console "$live"; fi
        echo "VTD-NEST-EXIT $rc" | tee_console "$live"
        if [ -n "$side" ]; then
            rc=0
            wait "$side" || rc=$?
            echo "VTD-NEST-SIDE-EXIT $rc" | tee_console "$live"
        fi
    done
}

tee_console() {
    if [ "$1" = live ]; then tee -a "$BATCH/console.log"; else cat >>"$BATCH/console.log"; fi
}

# The L1 initramfs: base (+ QEMU bundle) + this batch's init, jobs, L2 kernels and VMM.
l1_initrd() {
    local out="$1" root dir jd n=0 vmm kpath i set
    root="$(mktemp -d)"
    install -m 0755 "$E2E_LIB/l1-init" "$root/init"
    mkdir -p "$root/e2e/jobs" "$root/bin"
    # Each L2 kernel the jobs use, once.
    for dir in "$BATCH"/jobs/*; do
        kpath="$(l1_kernel_path "$dir")"
        if [ ! -f "$root$kpath" ]; then
            mkdir -p "$root$(dirname "$kpath")"
            cp "$(l2_dir "$(cat "$dir/kernel")")/vmlinuz" "$root$kpath"
        fi
    done
    echo "$BATCH_NDISKS" >"$root/e2e/ndisks"
    if batch_uses vtd-nest; then
        vmm="$(vmm_binary)"
        if readelf -d "$vmm" 2>/dev/null | grep -q '(NEEDED)'; then
            die "$vmm needs shared libraries; L1 needs a static build"
        fi
        strip -o "$root/bin/vtd-nest" "$vmm" 2>/dev/null || cp "$vmm" "$root/bin/vtd-nest"
    fi
    [ -z "$BATCH_WRAP" ] || install -m 0755 "$BATCH_WRAP" "$root/bin/e2e-wrap"
    for dir in "$BATCH"/jobs/*; do
        jd="$root/e2e/jobs/$(basename "$dir")"
        mkdir -p "$jd"
        cp "$dir/name" "$dir/timeout" "$jd/"
        [ ! -f "$dir/vfio-modules" ] || cp "$dir/vfio-modules" "$jd/"
        [ ! -f "$dir/side" ] || cp "$dir/side" "$jd/"
        [ -z "$BATCH_PIN" ] || echo "$BATCH_PIN" >"$jd/pin"
        [ -z "$BATCH_WRAP" ] || : >"$jd/wrap"
        l2_initrd "$dir/init" "$jd/initrd" "$(cat "$dir/kernel")"
        kpath="$(l1_kernel_path "$dir")"
        if [ "$(cat "$dir/inner")" = qemu ]; then
            render_command qemu /usr/bin/qemu-system-x86_64 "$kpath" "/e2e/jobs/${jd##*/}/initrd" \
                "$dir/callargs" >"$jd/args"
        else
            render_command vtd-nest /bin/vtd-nest "$kpath" "/e2e/jobs/${jd##*/}/initrd" \
                "$dir/callargs" >"$jd/args"
        fi
        n=$((n + 1))
    done
    # The addresses of the batch's real devices, for l1-init to bind them to vfio-pci.
    : >"$root/e2e/vfio"
    for ((i = 0; i < BATCH_NVFIO; i++)); do echo "$(vfio_bdf "$i")" >>"$root/e2e/vfio"; done
    cat "$E2E_CACHE/l1/base.cpio" >"$out"
    if batch_uses qemu; then cat "$E2E_CACHE/l1/qemu.cpio" >>"$out"; fi
    for set in $(batch_vfio_sets); do cat "$E2E_CACHE/l1/vfio-$set.cpio" >>"$out"; done
    cpio_of_dir "$root" "$out.extra"
    cat "$out.extra" >>"$out"
    rm -rf "$root" "$out.extra"
}

launch_nested() {
    local live="$1" dir dname idx file size total=$L1_OVERHEAD qemu=("${L1_QEMU[@]}") rc=0 iommu
    local append="$L1_APPEND"
    iommu="$(l1_iommu_mode)" || exit 2
    create_disks
    l1_initrd "$BATCH/l1-initrd.cpio"
    case "$iommu" in
        off) qemu+=(-M q35) ;;
        legacy) qemu+=(-M q35,kernel-irqchip=split -device "$L1_VIOMMU")
            append+=" intel_iommu=on,sm_off" ;;
        scalable) qemu+=(-M q35,kernel-irqchip=split -device "$L1_VIOMMU,x-scalable-mode=on")
            append+=" intel_iommu=on,sm_on" ;;
    esac
    # Real devices first, at their fixed slots, before any automatically placed device.
    for dir in "$BATCH"/jobs/*; do
        while read -r dname idx file size; do
            qemu+=(-drive "file=$file,if=none,id=e2ev$idx,format=raw,cache=writeback"
                -device "nvme,drive=e2ev$idx,serial=e2ev$idx,addr=$(printf '%02x' $((L1_VFIO_SLOT0 + idx))).0")
        done <"$dir/vfio"
    done
    for dir in "$BATCH"/jobs/*; do
        total=$((total + $(cat "$dir/timeout")))
        while read -r dname idx file size; do
            qemu+=(-drive "file=$file,if=none,id=e2ed$idx,format=raw,cache=writeback"
                -device "virtio-blk-pci,drive=e2ed$idx,serial=e2ed$idx")
        done <"$dir/disks"
    done
    qemu+=(-kernel "$E2E_CACHE/l1/vmlinuz" -initrd "$BATCH/l1-initrd.cpio" -append "$append")
    log "L1: vIOMMU $iommu, $BATCH_NVFIO real device(s)"
    log "booting L1 (QEMU TCG) for $BATCH_NJOBS job(s), limit ${total}s"
    run_logged "$live" timeout -k 5 "$total" "${qemu[@]}" || rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        touch "$BATCH/l1-timed-out"
        echo "e2e: L1 timed out after ${total}s" | tee_console "$live" >&2
    elif [ "$rc" != 0 ]; then
        echo "e2e: L1 QEMU exited with status $rc" | tee_console "$live" >&2
    fi
    return 0
}

# A quick boot of the first job's VMM command on this host's /dev/kvm with an init that only
# prints a marker. Succeeds only if the guest really reached its init.
probe_direct() {
    local dir="$BATCH/jobs/00" probe="$BATCH/probe" vmm="" cmd=() t="${VTD_NEST_E2E_PROBE_TIMEOUT:-30}"
    [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
    mkdir -p "$probe"
    echo 'echo E2E-PROBE-OK' >"$probe/init"
    l2_initrd "$probe/init" "$probe/initrd" "$(cat "$dir/kernel")"
    create_disks
    if [ "$(cat "$dir/inner")" = qemu ]; then
        vmm="qemu-system-x86_64"
    else
        vmm="$(vmm_binary)"
    fi
    mapfile -t cmd < <(render_command "$(cat "$dir/inner")" "$vmm" \
        "$(l2_dir "$(cat "$dir/kernel")")/vmlinuz" "$probe/initrd" "$dir/callargs" | host_paths "$dir")
    # In a subshell, so the shell's "Aborted" report of a crashing VMM lands in the log too.
    (timeout -k 5 "$t" "${cmd[@]}" </dev/null || true) >"$probe/log" 2>&1
    grep -q '^E2E-PROBE-OK' "$probe/log"
}

batch_launch() {
    local mode="$1" live="${2:-}"
    # Cached after the first time: this costs milliseconds.
    "$E2E_LIB/../prepare" >&2 || die "e2e/prepare failed"
    [ "$BATCH_NJOBS" -gt 0 ] || die "no jobs"
    : >"$BATCH/console.log"
    if [ "$mode" = auto ]; then
        if [ "$BATCH_NVFIO" -gt 0 ]; then
            mode=nested
            log "mode auto: using nested (real devices live in L1)"
        elif probe_direct; then
            mode=direct
        else
            mode=nested
        fi
        [ "$BATCH_NVFIO" -gt 0 ] ||
            log "mode auto: using $mode (a direct boot on /dev/kvm $([ "$mode" = direct ] && echo works || echo does not work here))"
    fi
    case "$mode" in
        direct) launch_direct "$live" ;;
        nested) launch_nested "$live" ;;
        *) die "unknown mode $mode (auto, direct or nested)" ;;
    esac
    split_console
}

# Cut console.log into each job's output and status.
split_console() {
    python3 - "$BATCH" <<'PY'
import os, re, sys
batch = sys.argv[1]
jobs = sorted(os.listdir(os.path.join(batch, "jobs")))
with open(os.path.join(batch, "console.log"), errors="replace") as f:
    lines = f.read().split("\n")
sections, cur = [], None
ansi = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")
for line in lines:
    line = ansi.sub("", line)
    if re.match(r"^VTD-NEST-JOB \S+\s*$", line):
        cur = {"lines": [], "status": "missing"}
        sections.append(cur)
    if cur is None:
        continue
    cur["lines"].append(line)
    m = re.match(r"^VTD-NEST-EXIT (\d+)\s*$", line)
    if m:
        cur["status"] = m.group(1)
        if any(l.startswith("VTD-NEST-TIMEOUT ") for l in cur["lines"]):
            cur["status"] = "timeout"
        cur = None
for i, job in enumerate(jobs):
    d = os.path.join(batch, "jobs", job)
    sec = sections[i] if i < len(sections) else {"lines": [], "status": "missing"}
    with open(os.path.join(d, "output"), "w") as f:
        f.write("\n".join(sec["lines"]) + "\n")
    with open(os.path.join(d, "status"), "w") as f:
        f.write(sec["status"] + "\n")
PY
}

# batch_result INDEX: the job's VMM exit status, "timeout" (the job, or L1 before the job
# finished, ran out of time) or "missing" (no status reported).
batch_result() {
    local status
    status="$(cat "$(batch_job_dir "$1")/status")"
    if [ "$status" = missing ] && [ -f "$BATCH/l1-timed-out" ]; then status=timeout; fi
    echo "$status"
}

batch_disks() {
    local dname idx file size dir
    dir="$(batch_job_dir "$1")"
    while read -r dname idx file size; do
        echo "HOST-DISK $dname $(sha256sum "$file" | cut -d' ' -f1)"
    done < <(cat "$dir/disks" "$dir/vfio")
}
