# shellcheck shell=bash
# refused: configurations the VMM must refuse before starting any guest, each with one clear
# sentence and a non-zero exit: x-flts without scalable mode, aw-bits=39 with x-flts, a kernel
# file that does not exist, a directory as kernel, an argument that is not UTF-8, more than 254
# vCPUs without interrupt remapping in extended interrupt mode. Runs the VMM binary directly on this host (no L1, no guest).
HOST_ONLY=1

# refuse_case WHAT REGEX VMM_ARGS...: prints why it failed, returns 1; silent on success.
refuse_case() {
    local what="$1" regex="$2" out rc=0 lines
    shift 2
    out="$(timeout -k 5 20 "$VMM_HOST" "$@" </dev/null 2>&1)" || rc=$?
    lines="$(printf '%s\n' "$out" | grep -cv '^[[:space:]]*$' || true)"
    if [ "$rc" = 0 ]; then echo "$what: the VMM exited with status 0"; return 1; fi
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "$what: the VMM was still running after 20 s"; return 1; fi
    if [ "$rc" = 101 ] || [ "$rc" -gt 128 ]; then echo "$what: the VMM crashed (status $rc)"; return 1; fi
    if printf '%s\n' "$out" | grep -Eq 'Linux version|E2E-GUEST'; then
        echo "$what: a guest started"
        return 1
    fi
    if [ "$lines" != 1 ]; then
        echo "$what: want one sentence, the VMM printed $lines lines: $(printf '%s' "$out" | tr '\n' '|' | cut -c1-200)"
        return 1
    fi
    if ! printf '%s\n' "$out" | grep -Eiq "$regex"; then
        echo "$what: the message does not mention /$regex/: $out"
        return 1
    fi
}

host_check() {
    local k="$E2E_CACHE/l2/vmlinuz" i="$WORK/refused/initrd" d="$WORK/refused/d0.img"
    local missing="$WORK/refused/no-such-vmlinuz" console="console=ttyS0 panic=-1"
    mkdir -p "$WORK/refused"
    echo 'echo E2E-GUEST-START' >"$WORK/refused/init"
    l2_initrd "$WORK/refused/init" "$i"
    truncate -s 8M "$d"
    refuse_case "x-flts without scalable mode" 'scalable' run --kernel "$k" --initrd "$i" \
        --cmdline "$console" --iommu intel,x-flts=on --disk "path=$d,iommu=on" &&
        refuse_case "aw-bits=39 with x-flts" 'aw-bits|address width' run --kernel "$k" --initrd "$i" \
            --cmdline "$console" --iommu intel,x-scalable-mode=on,x-flts=on,aw-bits=39 \
            --disk "path=$d,iommu=on" &&
        refuse_case "a missing kernel file" "no-such-vmlinuz" run --kernel "$missing" --initrd "$i" \
            --cmdline "$console" --iommu intel,x-scalable-mode=on,x-flts=on --disk "path=$d,iommu=on" &&
        refuse_case "a directory as kernel" "is a directory" run --kernel "$WORK/refused" \
            --initrd "$i" --cmdline "$console" &&
        refuse_case "an argument that is not UTF-8" "not valid UTF-8" run --kernel "$k" \
            --initrd "$i" --cmdline $'console=ttyS0 \xff' &&
        refuse_case "300 vCPUs without EIM" 'Extended Interrupt Mode.*intremap=on,eim=on' run \
            --kernel "$k" --initrd "$i" --cmdline "$console" --cpus 300
}
