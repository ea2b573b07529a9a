#!/bin/bash
# make image-check: boot the built directory tree in systemd-nspawn and use the station from outside.
#
#  1. the tree itself, booted with --volatile=overlay (nothing it writes is kept): wait for
#     burnstation-firstboot and burnstation.service; C-ECHO on the plain port and on the TLS port
#     (verified against the CA that first boot made, read from the container's tree); a small study
#     to <AET>_E with storescu; the job shows in `burnstation status` (no robot: it waits);
#  2. a persistent copy of the tree, booted twice: the first boot makes a device CA and machine id
#     that differ from boot 1's (a fresh tree makes new ones), the second keeps both.
#
# The container has its own network namespace (--private-network: loopback only, no DHCP needed,
# no clash with the host's ports); the dcmtk clients are the host's, run in that namespace with
# nsenter --net. Every run removes its container, copy and mounts, whatever happens (trap).
# Usage: MKOSI_TREE=build/image/tree/burnstation_0.1.0 image/check.sh (make image-check)
set -euo pipefail

TREE=${MKOSI_TREE:?set MKOSI_TREE to the directory image}
AET=BURNSTATION
BOOT_TIMEOUT=${BOOT_TIMEOUT:-180}
[ -x "$TREE/opt/burnstation/bin/burnstation" ] || { echo "image-check: no station in $TREE" >&2; exit 1; }
for tool in systemd-nspawn nsenter /usr/bin/echoscu /usr/bin/storescu /usr/bin/dump2dcm; do
    command -v "$tool" >/dev/null || { echo "image-check: $tool missing (make image-deps)" >&2; exit 1; }
done

WORK=$(mktemp -d /var/tmp/burnstation-check.XXXXXX)
NSPAWN=""   # pid of the running systemd-nspawn
INIT=""     # host pid of the container's systemd

log() { echo "image-check: $*"; }
fail() { echo "image-check: FAILED: $*" >&2; exit 1; }

stop_container() {
    [ -n "$NSPAWN" ] || return 0
    if kill -0 "$NSPAWN" 2>/dev/null; then
        kill -TERM "$NSPAWN" 2>/dev/null || true   # nspawn asks the container's systemd to power off
        for _ in $(seq 1 120); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$NSPAWN" 2>/dev/null; then
            echo "image-check: container did not stop within 60 s: killed" >&2
            kill -KILL "$NSPAWN" 2>/dev/null || true
        fi
    fi
    wait "$NSPAWN" 2>/dev/null || true
    NSPAWN="" INIT=""
}

cleanup() {
    local rc=$?
    set +e
    stop_container
    # nothing of this run may stay mounted (nspawn unmounts its own; this catches an interrupted run)
    findmnt -rn -o TARGET | { grep -F "$WORK" || true; } | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ct() { nsenter --target "$INIT" --mount --uts --ipc --net --pid -- "$@"; }
in_net() { nsenter --target "$INIT" --net -- "$@"; }
unit_state() { in_ct systemctl show -p ActiveState --value "$1" 2>/dev/null || echo unknown; }

# boot ROOT NAME FIRSTBOOT [nspawn options...]: start the container and wait for the station.
# FIRSTBOOT: "ran" (a fresh tree: burnstation-firstboot must run) or "skipped" (it ran on a boot before)
boot() {
    local root=$1 name=$2 firstboot=$3; shift 3
    local start=$SECONDS deadline=$((SECONDS + BOOT_TIMEOUT))
    log "booting $name"
    systemd-nspawn --quiet -D "$root" --register=no --keep-unit --private-network --boot \
        --machine="bs-check-$$" "$@" >"$WORK/$name.console" 2>&1 </dev/null &
    NSPAWN=$!
    while [ -z "$INIT" ]; do
        kill -0 "$NSPAWN" 2>/dev/null || { cat "$WORK/$name.console" >&2; fail "$name: systemd-nspawn exited"; }
        INIT=$(pgrep -P "$NSPAWN" -x systemd || true)
        [ $SECONDS -lt $deadline ] || fail "$name: no systemd in the container"
        [ -n "$INIT" ] || sleep 0.2
    done
    # burnstation.service starts after burnstation-firstboot has run (or was skipped)
    local st fb
    while :; do
        st=$(unit_state burnstation.service)
        [ "$st" = active ] && break
        if [ "$st" = failed ] || [ $SECONDS -ge $deadline ]; then
            in_ct journalctl --no-pager -b -u burnstation-cpu -u burnstation-firstboot -u burnstation >&2 || true
            fail "$name: burnstation.service is $st"
        fi
        sleep 0.5
    done
    fb=$(in_ct systemctl show -p ActiveState -p ConditionResult --value burnstation-firstboot.service | paste -sd' ')
    case "$firstboot:$fb" in
        "ran:active yes") ;;
        "skipped:inactive no") ;;
        *) fail "$name: burnstation-firstboot should have $firstboot, its state and condition: $fb" ;;
    esac
    log "$name: burnstation-firstboot $firstboot, burnstation.service active after $((SECONDS - start)) s"
    # the station answers once its dicom process listens (the supervisor starts it after the unit)
    until in_net /usr/bin/echoscu -to 5 -aec "$AET" 127.0.0.1 11112 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || fail "$name: no C-ECHO answer on 11112"
        sleep 0.5
    done
    log "$name: the station answers C-ECHO $((SECONDS - start)) s after the container started"
}

# identity ROOT: the device CA's fingerprint and the machine id, as "fp id"
identity() {
    local root=$1
    echo "$(openssl x509 -noout -fingerprint -sha256 -in "$root/var/lib/burnstation/tls/ca.pem" | cut -d= -f2)" \
         "$(cat "$root/etc/machine-id")"
}

# --- 1: the tree, volatile -----------------------------------------------------------------------
boot "$TREE" volatile ran --volatile=overlay
ROOTVIEW=/proc/$INIT/root
cp "$ROOTVIEW/var/lib/burnstation/tls/ca.pem" "$WORK/ca.pem"
in_net /usr/bin/echoscu -to 10 -aec "$AET" 127.0.0.1 11112 || fail "C-ECHO on the plain port"
log "C-ECHO on 11112: ok"
in_net /usr/bin/echoscu -to 10 -aec "$AET" --anonymous-tls +cf "$WORK/ca.pem" 127.0.0.1 2762 \
    || fail "C-ECHO on the TLS port (verified against the device CA)"
log "C-ECHO on 2762 (TLS, verified against the device CA from the tree): ok"
# and the verification is real: against a CA that did not sign the station's certificate it fails
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=other -keyout "$WORK/other.key" \
    -out "$WORK/other.pem" 2>/dev/null
if in_net /usr/bin/echoscu -to 10 -aec "$AET" --anonymous-tls +cf "$WORK/other.pem" 127.0.0.1 2762 2>/dev/null; then
    fail "TLS C-ECHO succeeded against a CA that did not sign the station's certificate"
fi
log "C-ECHO on 2762 against another CA: refused, as it must be"

uid="2.25.$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')"
cat >"$WORK/study.dump" <<EOF
(0002,0002) UI =SecondaryCaptureImageStorage
(0002,0003) UI [$uid.3]
(0002,0010) UI =LittleEndianExplicit
(0008,0016) UI =SecondaryCaptureImageStorage
(0008,0018) UI [$uid.3]
(0008,0020) DA [20260101]
(0008,0060) CS [OT]
(0010,0010) PN [IMAGE^CHECK]
(0010,0020) LO [IMGCHK]
(0020,000d) UI [$uid.1]
(0020,000e) UI [$uid.2]
(0028,0002) US 1
(0028,0004) CS [MONOCHROME2]
(0028,0010) US 2
(0028,0011) US 2
(0028,0100) US 8
(0028,0101) US 8
(0028,0102) US 7
(0028,0103) US 0
(7fe0,0010) OB 00\40\80\ff
EOF
/usr/bin/dump2dcm "$WORK/study.dump" "$WORK/study.dcm"
in_net /usr/bin/storescu -to 10 -aec "${AET}_E" 127.0.0.1 11112 "$WORK/study.dcm" || fail "C-STORE to ${AET}_E"
log "C-STORE of study $uid.1 to ${AET}_E: ok"

status() {
    in_ct runuser -u burnstation -- /opt/burnstation/bin/burnstation --data /var/lib/burnstation status "$@"
}
deadline=$((SECONDS + 60))
until status --json | python3 -c '
import json, sys
report = json.load(sys.stdin)
waiting = [w for w in report.get("waiting") or [] if "epson robot" in (w.get("message") or "").lower()]
sys.exit(0 if waiting else 1)' 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { status >&2 || true; fail "no job waiting for an Epson robot in burnstation status"; }
    sleep 1
done
status | sed -n '/^Queue/,/^Disk/p' | sed '$d; s/^/  /'
log "the job is in burnstation status, waiting for an Epson robot (there is none)"
read -r CA1 ID1 < <(identity "$ROOTVIEW")
t=$SECONDS
stop_container
log "stopped cleanly in $((SECONDS - t)) s"

# --- 2: a persistent copy, booted twice ----------------------------------------------------------
t=$SECONDS
cp -a --reflink=auto "$TREE" "$WORK/persist"
log "persistent copy of the tree made in $((SECONDS - t)) s"
boot "$WORK/persist" persistent-1 ran
read -r CA2 ID2 < <(identity "$WORK/persist")
stop_container
boot "$WORK/persist" persistent-2 skipped
read -r CA3 ID3 < <(identity "$WORK/persist")
stop_container
log "device CA:  volatile $CA1"
log "            copy 1   $CA2"
log "            copy 2   $CA3"
log "machine id: volatile $ID1, copy 1 $ID2, copy 2 $ID3"
[ "$CA2" != "$CA1" ] || fail "a fresh tree did not make its own device CA"
[ "$ID2" != "$ID1" ] || fail "a fresh tree did not get its own machine id"
[ "$CA3" = "$CA2" ] || fail "the second boot changed the device CA"
[ "$ID3" = "$ID2" ] || fail "the second boot changed the machine id"
case "$ID3" in uninitialized|"") fail "no machine id committed on the first boot" ;; esac
log "second boot kept the device CA and the machine id; a fresh tree made new ones"
log "passed"
