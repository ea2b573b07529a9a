#!/bin/bash
# make image-check: boot the built directory tree in systemd-nspawn and use the station from outside.
#
#  1. the tree itself, booted with --volatile=overlay (nothing it writes is kept): wait for
#     burnstation-firstboot and burnstation.service; C-ECHO on the plain port and on the TLS port
#     (verified against the CA that first boot made, read from the container's tree); a small study
#     to <AET>_E with storescu; the job shows in `burnstation status` (no robot: it waits);
#     then the network settings through the station's own command (`burnstation network set`, run
#     as its unprivileged user; the root unit burnstation-network-apply applies them): a static
#     address comes up on the container's eth0 and answers C-ECHO from a peer namespace;
#     the change is confirmed; a second change is left unconfirmed, the station is stopped, and
#     the first address comes back by itself after the real 120 s (the root unit's own timer);
#  2. a persistent copy of the tree, booted twice: the first boot makes a device CA and machine id
#     that differ from boot 1's (a fresh tree makes new ones), the second keeps both.
#
# The containers have their own network namespaces, no clash with the host's ports and no traffic
# to the host's network: boot 1 joins a namespace made here whose only link (eth0, a veth) ends in
# a second namespace made here (the "peer", 192.0.2.1/24, TEST-NET-1); boots 2 and 3 use
# --private-network (loopback only). The dcmtk clients are the host's, run in those namespaces
# (nsenter --net, ip netns exec). Every run removes its container, copy, namespaces and mounts,
# whatever happens (trap).
# Usage: MKOSI_TREE=build/image/tree/burnstation_0.1.0 image/check.sh (make image-check)
set -euo pipefail

TREE=${MKOSI_TREE:?set MKOSI_TREE to the directory image}
AET=BURNSTATION
BOOT_TIMEOUT=${BOOT_TIMEOUT:-180}
[ -x "$TREE/opt/burnstation/bin/burnstation" ] || { echo "image-check: no station in $TREE" >&2; exit 1; }
for tool in systemd-nspawn nsenter ip /usr/bin/echoscu /usr/bin/storescu /usr/bin/dump2dcm; do
    command -v "$tool" >/dev/null || { echo "image-check: $tool missing (make image-deps)" >&2; exit 1; }
done

WORK=$(mktemp -d /var/tmp/burnstation-check.XXXXXX)
NS_CT=bs-check-ct-$$     # boot 1's network namespace (eth0)
NS_PEER=bs-check-peer-$$ # the other end of eth0 (192.0.2.1/24)
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
    for ns in "$NS_CT" "$NS_PEER"; do ip netns del "$ns" 2>/dev/null; done
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ct() { nsenter --target "$INIT" --mount --uts --ipc --net --pid -- "$@"; }
in_net() { nsenter --target "$INIT" --net -- "$@"; }
unit_state() { in_ct systemctl show -p ActiveState --value "$1" 2>/dev/null || echo unknown; }

# boot ROOT NAME FIRSTBOOT [nspawn options...]: start the container and wait for the station.
# FIRSTBOOT: "ran" (a fresh tree: burnstation-firstboot must run) or "skipped" (it ran on a boot before);
# the options say which network the container has (--private-network or --network-namespace-path=)
boot() {
    local root=$1 name=$2 firstboot=$3; shift 3
    local start=$SECONDS deadline=$((SECONDS + BOOT_TIMEOUT))
    log "booting $name"
    systemd-nspawn --quiet -D "$root" --register=no --keep-unit --boot \
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
ip netns add "$NS_CT"
ip netns add "$NS_PEER"
ip -n "$NS_CT" link add eth0 type veth peer name peer0 netns "$NS_PEER"
ip -n "$NS_PEER" addr add 192.0.2.1/24 dev peer0
ip -n "$NS_PEER" link set lo up
ip -n "$NS_PEER" link set peer0 up
ip -n "$NS_CT" link set lo up
# nspawn grants CAP_NET_ADMIN only with the network options it sets up itself; networkd needs it
# (and it reaches no further than the namespace made here)
boot "$TREE" volatile ran --volatile=overlay --network-namespace-path="/run/netns/$NS_CT" \
    --capability=CAP_NET_ADMIN
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

# --- 1b: network settings, applied inside the container ------------------------------------------
bs() { in_ct runuser -u burnstation -- /opt/burnstation/bin/burnstation --data /var/lib/burnstation "$@"; }
v4() { in_ct ip -4 -o addr show dev eth0 | awk '{print $4}' | paste -sd' '; }
# wait_addr WANT GONE SECONDS: until eth0 has WANT and not GONE
wait_addr() {
    local until=$((SECONDS + $3))
    while :; do
        local now; now=" $(v4) "
        [[ "$now" == *" $1 "* && ( -z "$2" || "$now" != *" $2 "* ) ]] && return 0
        [ $SECONDS -lt $until ] || { in_ct journalctl --no-pager -u burnstation-network-apply >&2 || true
                                     fail "eth0 has [$now], expected $1${2:+ without $2}"; }
        sleep 0.5
    done
}
lcd() {
    in_ct runuser -u burnstation -- /opt/burnstation/bin/python3 -c '
from pathlib import Path
from appliance.config import Settings
from appliance.panel import screen
d = Path("/var/lib/burnstation")
print("\n".join("  LCD |" + line.ljust(20)[:20] + "|" for line in screen.pages(d, Settings(d))[0]))'
}
log "network: eth0 before: [$(v4)] (DHCP, no server in the peer namespace)"
out=$(bs network set mode=static address=192.0.2.20/24 gateway=192.0.2.1 dns=192.0.2.1 hostname=bs-check) \
    || fail "network set: $out"
echo "$out" | sed 's/^/  /'
wait_addr 192.0.2.20/24 "" 20
log "network: eth0 after \`burnstation network set mode=static address=192.0.2.20/24 ...\`: [$(v4)]"
in_ct ip -4 addr show dev eth0 | sed 's/^/  /'
[ "$(in_ct cat /proc/sys/kernel/hostname)" = bs-check ] || fail "host name not applied: $(in_ct cat /proc/sys/kernel/hostname)"
in_ct cat /etc/systemd/network/10-burnstation.network | sed 's/^/  \/etc\/systemd\/network\/10-burnstation.network: /'
ip netns exec "$NS_PEER" /usr/bin/echoscu -to 10 -aec "$AET" 192.0.2.20 11112 || fail "C-ECHO on 192.0.2.20"
log "network: from the peer namespace, 192.0.2.20 answers C-ECHO; host name bs-check"
out=$(bs network show) || fail "network show: $out"
echo "$out" | sed 's/^/  /'
[[ "$out" == *"rolled back in"* ]] || fail "network show does not show the pending change"
out=$(lcd) || fail "LCD page: $out"
echo "$out"
[[ "$out" == *"IP 192.0.2.20"* && "$out" == *"IP confirm"* ]] || fail "the LCD does not show the address and the countdown"
out=$(bs network confirm) || fail "network confirm: $out"
echo "$out" | sed 's/^/  /'
bs network show --json | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(s["pending_seconds"] is not None)' \
    || fail "still pending after confirm"
log "network: confirmed; now a second change, left unconfirmed"
out=$(bs network set address=192.0.2.30/24) || fail "network set: $out"
echo "$out" | sed 's/^/  /'
t=$SECONDS
wait_addr 192.0.2.30/24 192.0.2.20/24 20
log "network: eth0 [$(v4)]; stopping burnstation.service: the rollback must not need the station"
in_ct systemctl stop burnstation.service
in_ct systemctl list-timers --all --no-pager burnstation-network-rollback.timer | sed -n '1,2s/^/  /p'
wait_addr 192.0.2.20/24 192.0.2.30/24 150
elapsed=$((SECONDS - t))
[ $elapsed -ge 115 ] || fail "rolled back after $elapsed s, before the 120 s"
log "network: unconfirmed change rolled back by itself $elapsed s after it was set: eth0 [$(v4)]"
in_ct journalctl --no-pager -o cat -u burnstation-network-apply | grep -iE "rolled|not confirmed|installed" | tail -3 \
    | sed 's/^/  journal: /'
in_ct systemctl start burnstation.service
until ip netns exec "$NS_PEER" /usr/bin/echoscu -to 5 -aec "$AET" 192.0.2.20 11112 2>/dev/null; do
    [ $SECONDS -lt $((t + 240)) ] || fail "no C-ECHO on 192.0.2.20 after the station started again"
    sleep 0.5
done
bs network show --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
assert s["pending_seconds"] is None and s["values"]["address"] == "192.0.2.20/24", s' || fail "station not back on 192.0.2.20/24"
log "network: the station, started again, answers C-ECHO on 192.0.2.20 and shows those settings, nothing pending"

read -r CA1 ID1 < <(identity "$ROOTVIEW")
t=$SECONDS
stop_container
log "stopped cleanly in $((SECONDS - t)) s"

# --- 2: a persistent copy, booted twice ----------------------------------------------------------
t=$SECONDS
cp -a --reflink=auto "$TREE" "$WORK/persist"
log "persistent copy of the tree made in $((SECONDS - t)) s"
boot "$WORK/persist" persistent-1 ran --private-network
read -r CA2 ID2 < <(identity "$WORK/persist")
stop_container
boot "$WORK/persist" persistent-2 skipped --private-network
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
