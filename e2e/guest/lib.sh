# shellcheck shell=sh
# e2e/guest/lib.sh: guest-side helpers of the suite's scenarios (busybox sh). e2e/suite puts this
# file in front of a scenario's guest script; the result is the guest's init script.
#
# Lines it prints for the host-side checks:
#   CHECK-OK <what> / CHECK-FAIL <what>     one per check (a FAIL makes the script exit 1)
#   GUEST-CAP <cap> <ecap>                  /sys/class/iommu/dmar0/intel-iommu/{cap,ecap}
#   GUEST-DISK <name> <sha256>              the whole disk's contents after the last write
set -e

ok() {
    echo "CHECK-OK $*"
}

# To stderr (the console too), so a failure inside $(...) still shows; set -e ends the script.
fail() {
    echo "CHECK-FAIL $*" >&2
    exit 1
}

# dmesg_has EXTENDED_REGEX WHAT
dmesg_has() {
    if dmesg | grep -Eq "$1"; then ok "$2"; else fail "$2: no dmesg line matches /$1/"; fi
}

report_cap() {
    d=/sys/class/iommu/dmar0/intel-iommu
    [ -r "$d/cap" ] || fail "no $d/cap in the guest"
    echo "GUEST-CAP $(cat "$d/cap") $(cat "$d/ecap")"
}

# The block device of the disk at position N (0 = first) in PCI order, e.g. /dev/vda.
disk_dev() {
    n=0
    for b in $(ls -d /sys/bus/pci/devices/*/virtio*/block/vd* 2>/dev/null | sort); do
        if [ "$n" = "$1" ]; then echo "/dev/${b##*/}"; return 0; fi
        n=$((n + 1))
    done
    fail "no virtio disk number $1 in the guest"
}

# The first namespace of NVMe controller N (e.g. /dev/nvme0n1): an assigned real device, driven
# by the guest's own (built-in) NVMe driver, which probes asynchronously, so this waits up to
# 10 s for it.
nvme_dev() {
    i=0
    until [ -b "/dev/nvme${1}n1" ] && [ -r "/sys/block/nvme${1}n1/size" ]; do
        [ "$i" -lt 100 ] ||
            fail "no NVMe namespace /dev/nvme${1}n1 in the guest after 10 s (dmesg: $(dmesg | grep -i nvme | tail -n 3 | tr "\n" "|"))"
        sleep 0.1
        i=$((i + 1))
    done
    echo "/dev/nvme${1}n1"
}

# The PCI address (0000:00:03.0) of a block device (/dev/vdX or /dev/nvmeXnY): the nearest PCI
# device above it in sysfs.
pci_of() {
    case "${1##*/}" in
        # With native multipath the namespace's disk hangs off the NVMe subsystem, not the PCI
        # device: go through its controller.
        nvme*n*) c=${1##*/nvme}; p=$(readlink -f "/sys/class/nvme/nvme${c%%n*}/device") ;;
        *) p=$(readlink -f "/sys/block/${1##*/}/device") ;;
    esac
    while [ -n "$p" ] && [ "$p" != / ]; do
        case "${p##*/}" in
            [0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7])
                echo "${p##*/}"
                return 0 ;;
        esac
        p=${p%/*}
    done
    fail "no PCI device above $1"
}

# assigned_nvme_check NAME WHAT [DOMAIN_TYPE]: the assigned NVMe (QEMU's, 1b36:0010) is the
# guest's first NVMe namespace; with DOMAIN_TYPE its IOMMU group has that default domain; then
# data_check over it.
assigned_nvme_check() {
    dev=$(nvme_dev 0)
    pci=$(pci_of "$dev")
    id="$(cat "/sys/bus/pci/devices/$pci/vendor"):$(cat "/sys/bus/pci/devices/$pci/device")"
    if [ "$id" = 0x1b36:0x0010 ]; then ok "$dev is the assigned NVMe at $pci"; else fail "$dev at $pci is $id, not QEMU's NVMe"; fi
    [ -z "${3:-}" ] || expect_domain_type "$pci" "$3"
    data_check "$1" "$dev" "$2"
}

# intx_check PCI CHIP: the function at PCI (bus 0) interrupts through INTx: no MSI/MSI-X, its
# IRQ (what lspci shows as "pin A routed to IRQ N") is the level-triggered (fasteoi) line of
# CHIP (IO-APIC or IR-IO-APIC) pin 16 + (device + pin - 1) mod 8, the DSDT's _PRT swizzle, in
# /proc/interrupts, and it has been taken.
intx_check() {
    irq=$(cat "/sys/bus/pci/devices/$1/irq")
    pin=$(od -An -tu1 -j61 -N1 "/sys/bus/pci/devices/$1/config" | tr -d ' ')
    [ "$pin" = 1 ] || fail "$1 reports interrupt pin $pin, not INTA"
    dev=${1#*:*:}
    gsi=$((16 + (0x${dev%.*} + pin - 1) % 8))
    line=$(grep -E "^ *$irq:" /proc/interrupts | tr -s ' ')
    n=$(echo "$line" | awk '{ for (c = 2; c <= NF && $c ~ /^[0-9]+$/; c++) sum += $c } END { print sum + 0 }')
    case "$line" in
        *" $2 $gsi-fasteoi "*nvme*) ;;
        *) fail "IRQ $irq of $1 is not an NVMe $2 pin $gsi fasteoi line: $line" ;;
    esac
    if grep -q "PCI-MSI.*nvme" /proc/interrupts; then fail "the NVMe uses MSI: $(grep nvme /proc/interrupts | tr -s ' ')"; fi
    if [ "$n" -gt 0 ]; then ok "$n NVMe INTx interrupts on IRQ $irq, $2 pin $gsi (fasteoi)"; else fail "no interrupt on IRQ $irq: $line"; fi
}

# The IOMMU group number of a PCI address.
group_of() {
    g=$(readlink -f "/sys/bus/pci/devices/$1/iommu_group") || fail "$1 has no IOMMU group"
    [ -e "/sys/bus/pci/devices/$1/iommu_group" ] || fail "$1 has no IOMMU group"
    echo "${g##*/}"
}

# expect_domain_type PCI TYPE: the group's default domain type (DMA, DMA-FQ, identity).
expect_domain_type() {
    t=$(cat "/sys/kernel/iommu_groups/$(group_of "$1")/type")
    if [ "$t" = "$2" ]; then ok "domain type of $1 is $2"; else fail "domain type of $1 is $t, want $2"; fi
}

# data_check NAME DEV WHAT: write a fresh random pattern over the whole disk with direct I/O,
# read it back (1 MiB and 4 KiB requests, direct I/O) and compare. Prints GUEST-DISK.
data_check() {
    name=$1 dev=$2 what=$3
    sectors=$(cat "/sys/block/${dev##*/}/size")
    mib=$((sectors / 2048))
    [ "$mib" -ge 1 ] || fail "$what: $dev is smaller than 1 MiB"
    dd if=/dev/urandom of=/tmp/pattern bs=1M count="$mib" 2>/dev/null || fail "$what: no pattern"
    want=$(sha256sum /tmp/pattern | cut -d' ' -f1)
    dd if=/tmp/pattern of="$dev" bs=1M oflag=direct 2>/tmp/dd.err ||
        fail "$what: direct write to $dev failed: $(tail -n1 /tmp/dd.err)"
    got=$(dd if="$dev" bs=1M iflag=direct 2>/tmp/dd.err | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || fail "$what: 1 MiB direct reads of $dev differ from what was written"
    small=$(dd if="$dev" bs=4k count=256 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
    head_=$(dd if=/tmp/pattern bs=4k count=256 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ "$small" = "$head_" ] || fail "$what: 4 KiB direct reads of $dev differ from what was written"
    rm -f /tmp/pattern
    ok "$what: $mib MiB written and read back identical through $dev"
    echo "GUEST-DISK $name $got"
}

# rebind_with_type PCI TYPE: unbind the device's driver, set its group's domain type, rebind.
rebind_with_type() {
    pci=$1 type=$2
    drv=$(readlink -f "/sys/bus/pci/devices/$pci/driver") || fail "$pci has no driver"
    echo "$pci" >"$drv/unbind" || fail "cannot unbind $pci from ${drv##*/}"
    group=$(group_of "$pci")
    echo "$type" >"/sys/kernel/iommu_groups/$group/type" ||
        fail "cannot set the domain type of group $group to $type"
    echo "$pci" >"$drv/bind" || fail "cannot rebind $pci to ${drv##*/}"
    i=0
    until block_of "$pci" >/dev/null; do
        [ "$i" -lt 100 ] || fail "no disk on $pci after rebinding it (block: $(ls /sys/block | tr '\n' ' '); driver: $(readlink "/sys/bus/pci/devices/$pci/driver"))"
        sleep 0.1
        i=$((i + 1))
    done
    expect_domain_type "$pci" "$type"
}

# block_of PCI: the block device (/dev/vdX, /dev/nvmeXn1) of the virtio disk or NVMe
# controller at PCI; fails quietly (status 1) while there is none. An NVMe namespace's disk hangs
# off its subsystem (native multipath): it is matched through its controller, as pci_of does.
block_of() {
    for b in "/sys/bus/pci/devices/$1"/virtio*/block/vd*; do
        if [ -e "$b" ] && [ -b "/dev/${b##*/}" ]; then
            echo "/dev/${b##*/}"
            return 0
        fi
    done
    for b in /sys/block/nvme*n1; do
        [ -e "$b" ] && [ -b "/dev/${b##*/}" ] || continue
        c=${b##*/nvme}
        p=$(readlink -f "/sys/class/nvme/nvme${c%%n*}/device") || continue
        if [ "${p##*/}" = "$1" ]; then
            echo "/dev/${b##*/}"
            return 0
        fi
    done
    return 1
}

# remapped_requests PCI: how many request interrupts the virtio disk at PCI took through
# remapped MSI-X, summed over the CPUs. The chip is "IR-PCI-MSIX-<PCI>" from Linux 6.2 (per-device
# MSI domains) and "IR-PCI-MSI" before, so the line is found by the queue's name (virtioN-req.Q).
remapped_requests() {
    v=$(basename "$(echo "/sys/bus/pci/devices/$1"/virtio*)")
    awk -v q="$v-req" '/IR-PCI-MSI/ && index($0, q) {
        for (c = 2; c <= NF && $c ~ /^[0-9]+$/; c++) sum += $c } END { print sum + 0 }' /proc/interrupts
}

# irq_count PATTERN CPU: the count of CPU (its number; the column is found by its header, as
# only online CPUs have one) on the first /proc/interrupts line matching PATTERN.
irq_count() {
    awk -v cpu="CPU$2" -v pat="$1" '
        NR == 1 { for (c = 1; c <= NF; c++) if ($c == cpu) col = c + 1; next }
        $0 ~ pat { print (col ? $col : 0); exit }' /proc/interrupts
}

# cpus_used PATTERN: how many CPU columns are non-zero, summed over every line matching PATTERN.
cpus_used() {
    awk -v pat="$1" -v n="$(grep -c '^processor' /proc/cpuinfo)" '
        $0 ~ pat { for (c = 0; c < n; c++) sum[c] += $(2 + c) }
        END { used = 0; for (c = 0; c < n; c++) if (sum[c] > 0) used++; print used }
    ' /proc/interrupts
}

# spread_over_cpus PATTERN WHAT: the interrupts of the lines matching PATTERN landed on at least
# two CPUs.
spread_over_cpus() {
    used=$(cpus_used "$1")
    if [ "$used" -ge 2 ]; then
        ok "$2 landed on $used vCPUs"
    else
        fail "$2 landed on $used vCPU(s): $(grep -E "$1" /proc/interrupts | tr -s ' ' | tr '\n' '|')"
    fi
}

# serial_follows_affinity LINE CPU: moves ttyS0's interrupt (LINE: its /proc/interrupts line) to
# CPU, then sends output a line at a time (each line starts a transmission, so each interrupts at
# least once; one interrupt may still arrive where it was while Linux moves it) and expects
# interrupts on CPU.
serial_follows_affinity() {
    irq=$(echo "$1" | awk '{ sub(":", "", $1); print $1 }')
    echo "$2" >"/proc/irq/$irq/smp_affinity_list" || fail "cannot move IRQ $irq to CPU $2"
    before=$(irq_count 'ttyS0' "$2")
    i=0
    while [ "$i" -lt 32 ]; do
        echo "serial line $i on its way to CPU $2"
        sleep 0.05
        i=$((i + 1))
    done
    after=$(irq_count 'ttyS0' "$2")
    if [ "$after" -gt "$before" ]; then
        ok "ttyS0 interrupts on CPU $2 after the affinity change ($before -> $after)"
    else
        fail "no ttyS0 interrupt on CPU $2 after the affinity change (effective affinity $(cat "/proc/irq/$irq/effective_affinity_list")): $(grep ttyS0 /proc/interrupts | tr -s ' ')"
    fi
}

# put_mark DEV MARK: MARK in DEV's first sector, where a side script's wait_mark reads it
# (e2e/lib/side.sh); also printed.
put_mark() {
    echo "$2" | dd of="$1" bs=512 count=1 conv=sync oflag=direct 2>/dev/null ||
        fail "cannot write the mark $2 on $1"
    echo "$2"
}

# unplugged PATH SECONDS: waits until the sysfs PATH of a function the VMM unplugs is gone; fails
# after SECONDS.
unplugged() {
    i=0
    while [ -e "$1" ]; do
        i=$((i + 1))
        [ "$i" -le $(($2 * 10)) ] || fail "$1 is still there $2 s after the data check"
        sleep 0.1
    done
}
