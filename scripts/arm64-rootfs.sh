#!/usr/bin/env bash
# Build (or reuse) a cached Debian bookworm arm64 root file system for the emulated
# Raspberry Pi check, without binfmt_misc or any kernel setup:
#   debootstrap --foreign (host, downloads + unpacks) then the second stage inside
#   `proot -0 -q qemu-aarch64-static` (user-mode emulation, fake root).
# The root lives OUTSIDE the repository (EDGECALL_ARM64_ROOT, default
# /work/cache/arm64-rootfs) and is rebuilt when missing or incomplete.
#
# Usage: scripts/arm64-rootfs.sh            # build if missing, print timings
#        scripts/arm64-rootfs.sh --rebuild  # delete and rebuild
# Sourced by scripts/arm64-check.sh for the `in_root` helper.
set -euo pipefail

ARM64_ROOT="${EDGECALL_ARM64_ROOT:-/work/cache/arm64-rootfs}"
ARM64_MIRROR="${EDGECALL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ARM64_SUITE=bookworm
# Debian packages a Pi user has on Raspberry Pi OS (bookworm) + what `pip install .` needs.
ARM64_PACKAGES="python3,python3-venv,python3-dev,python3-pip,gcc,libc6-dev,libgomp1,ca-certificates,binutils"
export QEMU_CPU="${QEMU_CPU:-max}"   # max exposes NEON + dotprod (+ more) to the guest
# proot 5.1 (bookworm) does not translate faccessat2/statx, which qemu's glibc uses; the
# wrapper (scripts/arm64-qemu-wrap.c, built here with the host cc) makes them ENOSYS.
QEMU_WRAP="${EDGECALL_QEMU_WRAP:-$(dirname "$ARM64_ROOT")/tools/qemu-aarch64-wrap}"
_SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NICE="nice -n ${EDGECALL_NICE:-10}"  # added to the caller's niceness

_now() { date +%s.%N; }
# step NAME CMD... : run a step, record how long it took, keep its output in its own log
# ($STEP_LOG_DIR/NN-name.log; a failed step is added to $STEP_LOG_DIR/failed.tsv).
STEP_LOG="${STEP_LOG:-$(mktemp /tmp/edgecall-arm64-steps.XXXXXX)}"
STEP_LOG_DIR="${STEP_LOG_DIR:-$STEP_LOG.d}"
export STEP_LOG STEP_LOG_DIR
STEP_NO=0
step() {
    local name="$1"; shift
    local t0 t1 rc log
    STEP_NO=$((STEP_NO + 1))
    mkdir -p "$STEP_LOG_DIR"
    log="$STEP_LOG_DIR/$(printf '%02d' "$STEP_NO")-$(echo "$name" | tr -cs 'A-Za-z0-9' '-' \
        | cut -c1-60).log"
    echo "==> [$(date -u +%H:%M:%S)] $name (log: $log)" >&2
    t0=$(_now)
    set +e; "$@" 2>&1 | tee "$log"; rc=${PIPESTATUS[0]}; set -e
    t1=$(_now)
    printf '%-48s %8.1f s  %s\n' "$name" "$(awk "BEGIN{print $t1 - $t0}")" \
        "$([ "$rc" -eq 0 ] && echo ok || echo "FAILED (exit $rc)")" | tee -a "$STEP_LOG" >&2
    [ "$rc" -eq 0 ] || printf '%s\t%s\n' "$name" "$log" >> "$STEP_LOG_DIR/failed.tsv"
    return "$rc"
}

need_host_tools() {
    local missing=()
    local py="${EDGECALL_HOST_PYTHON:-python3}"
    for t in debootstrap proot qemu-aarch64-static aarch64-linux-gnu-objdump \
             aarch64-linux-gnu-gcc cc git "$py"; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    # the x86 reference and the cross build's Cython live in venvs of the host Python
    if command -v "$py" >/dev/null && ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
        missing+=("$py -m venv (python3-venv)")
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        echo "arm64-check: missing host tools: ${missing[*]} (apt-get install debootstrap" \
             "proot qemu-user-static binutils-aarch64-linux-gnu gcc-aarch64-linux-gnu" \
             "gcc python3-venv git)" >&2
        return 1
    fi
}

build_wrap() {
    # Rebuilt when missing or older than its source; qemu must also exist inside the root
    # because proot resolves the wrapper's execve of it as a guest path.
    if [ ! -x "$QEMU_WRAP" ] || [ "$_SRC_DIR/arm64-qemu-wrap.c" -nt "$QEMU_WRAP" ]; then
        mkdir -p "$(dirname "$QEMU_WRAP")"
        cc -O2 -o "$QEMU_WRAP" "$_SRC_DIR/arm64-qemu-wrap.c"
    fi
    if [ -d "$ARM64_ROOT/usr/bin" ] && ! cmp -s /usr/bin/qemu-aarch64-static \
            "$ARM64_ROOT/usr/bin/qemu-aarch64-static"; then
        cp /usr/bin/qemu-aarch64-static "$ARM64_ROOT/usr/bin/qemu-aarch64-static"
    fi
}

# fake_cpuinfo KIND: an arm64 /proc/cpuinfo (a76 = Pi 5, a72 = Pi 4) for the guest. Under
# qemu-user the guest would read the host's x86 /proc/cpuinfo; onnxruntime's cpuinfo
# library then crashes (SIGSEGV) while importing. A real Pi has the real file.
fake_cpuinfo() {
    local kind="$1" f feat var part rev i
    f="$(dirname "$QEMU_WRAP")/cpuinfo-$1"
    if [ "$kind" = a72 ]; then
        feat="fp asimd evtstrm crc32 cpuid"; var=0x0; part=0xd08; rev=3
    else
        feat="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm"
        feat="$feat lrcpc dcpop asimddp"; var=0x4; part=0xd0b; rev=1
    fi
    mkdir -p "$(dirname "$f")"
    : > "$f"
    for i in $(seq 0 $(( $(nproc) - 1 ))); do
        printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$i" "$feat" "$var" "$part" "$rev" >> "$f"
    done
    echo "$f"
}

# in_root CMD... : run CMD inside the arm64 root (fake root, emulated CPU), nice'd.
# Binds /dev /proc /sys, the host's local wheel mirrors (so the host pip settings that
# point at them resolve) and EDGECALL_BIND ("host:guest" pairs, space separated).
in_root() {
    local binds=(-b /dev -b /proc -b /sys -b /etc/resolv.conf)
    local d
    for d in /opt/wheels /opt/pypi /opt/pypi-more; do
        [ -d "$d" ] && binds+=(-b "$d")
    done
    for d in ${EDGECALL_BIND:-}; do binds+=(-b "$d"); done
    case "$QEMU_CPU" in
        cortex-a72|cortex-a57|cortex-a53) binds+=(-b "$(fake_cpuinfo a72):/proc/cpuinfo") ;;
        *) binds+=(-b "$(fake_cpuinfo a76):/proc/cpuinfo") ;;
    esac
    # shellcheck disable=SC2046,SC2086  # PIP_* settings and $NICE split into words on purpose
    env -i HOME=/root LANG=C.UTF-8 TERM=dumb QEMU_CPU="$QEMU_CPU" \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        $(env | grep -E '^PIP_' | grep -v '^PIP_FIND_LINKS=' || true) \
        EDGECALL_QEMU=/usr/bin/qemu-aarch64-static \
        $NICE proot -0 -r "$ARM64_ROOT" -q "$QEMU_WRAP" "${binds[@]}" -w /root "$@"
}

rootfs_ok() { [ -f "$ARM64_ROOT/.edgecall-rootfs-ok" ]; }

first_stage() {
    rm -rf "$ARM64_ROOT"; mkdir -p "$(dirname "$ARM64_ROOT")"
    $NICE debootstrap --foreign --arch=arm64 --variant=minbase \
        --include="$ARM64_PACKAGES" "$ARM64_SUITE" "$ARM64_ROOT" "$ARM64_MIRROR"
}

second_stage() {
    # proot cannot create device nodes etc.; debootstrap's second stage still completes
    # because /dev /proc /sys are bound from the host.
    # In a container debootstrap symlinks /proc to the host's; proot needs a directory.
    if [ -L "$ARM64_ROOT/proc" ]; then rm -f "$ARM64_ROOT/proc"; mkdir "$ARM64_ROOT/proc"; fi
    build_wrap
    # `[ -x ]` is unreliable under proot+qemu, so name the debootstrap dir explicitly.
    in_root /bin/sh -c 'DEBOOTSTRAP_DIR=/debootstrap exec /bin/sh /debootstrap/debootstrap --second-stage'
}

host_settings() {
    # pip settings and CA certificates of the host, so pip inside reaches the index
    # exactly as it does outside (a proxying/TLS-intercepting network needs the host CA).
    install -d "$ARM64_ROOT/etc/xdg" "$ARM64_ROOT/usr/local/share/ca-certificates"
    [ -f /etc/pip.conf ] && cp /etc/pip.conf "$ARM64_ROOT/etc/pip.conf"
    [ -d /etc/xdg/pip ] && rm -rf "$ARM64_ROOT/etc/xdg/pip" && cp -r /etc/xdg/pip "$ARM64_ROOT/etc/xdg/pip"
    cp /etc/ssl/certs/ca-certificates.crt "$ARM64_ROOT/usr/local/share/ca-certificates/host-bundle.crt"
    cp /etc/ssl/certs/ca-certificates.crt "$ARM64_ROOT/etc/ssl/certs/ca-certificates.crt"
    cp /etc/resolv.conf "$ARM64_ROOT/etc/resolv.conf" 2>/dev/null || true
    printf 'APT::Sandbox::User "root";\n' > "$ARM64_ROOT/etc/apt/apt.conf.d/99proot"
}

smoke() {
    in_root /bin/sh -c 'uname -m; python3 --version; gcc --version | head -1;
        echo "int main(void){return 0;}" > /tmp/t.c;
        gcc -c /tmp/t.c -o /tmp/t.o || exit 1; echo "gcc compiles (cc1 found)";
        [ -x /usr/bin/gcc ] || exit 1; echo "[ -x ] works";
        grep -m1 -o "asimddp" /proc/cpuinfo || echo "(no asimddp in emulated /proc/cpuinfo)"'
}

build_rootfs() {
    need_host_tools
    touch "$STEP_LOG"
    if [ "${1:-}" = "--rebuild" ]; then rm -rf "$ARM64_ROOT"; fi
    build_wrap
    if rootfs_ok; then
        echo "arm64 root: reusing cached $ARM64_ROOT" >&2
        printf '%-48s %8s    %s\n' "rootfs: cached (see build below)" "0.0 s" "ok" >> "$STEP_LOG"
        sed 's/^/    (cached build) /' "$ARM64_ROOT/.edgecall-rootfs-ok" >> "$STEP_LOG"
        return 0
    fi
    local mark; mark=$(wc -l < "$STEP_LOG")
    if [ ! -f "$ARM64_ROOT/debootstrap/debootstrap" ]; then
        step "rootfs: debootstrap --foreign (download+unpack)" first_stage || return 1
    fi
    step "rootfs: second stage under proot+qemu" second_stage || return 1
    step "rootfs: host pip settings + CA certificates" host_settings || return 1
    step "rootfs: smoke test (python3, gcc)" smoke || return 1
    { echo "built $(date -u +%FT%TZ)"; tail -n +$((mark + 1)) "$STEP_LOG"; } \
        > "$ARM64_ROOT/.edgecall-rootfs-ok"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    build_rootfs "${1:-}"
    echo "--- timings ---"; cat "$STEP_LOG"
fi
