#!/bin/sh
# Install edgecall as a systemd service beside MinKNOW.
#
#   sudo systemd/install.sh [--prefix /opt/edgecall] [--no-start]
#
# Creates the system user `edgecall` (added to the `minknow` group when it exists, so it
# can read MinKNOW's output), a virtualenv under PREFIX with edgecall installed from this
# checkout (bundled models included), /etc/edgecall/edgecall.env (kept if present), /var/lib/edgecall/{basecalls,state},
# and /etc/systemd/system/edgecall.service; then enables and starts the service.
set -eu

PREFIX=/opt/edgecall
START=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
command -v systemctl >/dev/null || { echo "install.sh: systemd not found" >&2; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PYTHON=${PYTHON:-python3}

echo "edgecall: user and folders"
if ! id edgecall >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/edgecall --no-create-home \
        --shell /usr/sbin/nologin --comment "edgecall basecaller" edgecall
fi
if getent group minknow >/dev/null 2>&1; then
    usermod -a -G minknow edgecall
fi
install -d -o edgecall -g edgecall -m 0750 /var/lib/edgecall \
    /var/lib/edgecall/basecalls /var/lib/edgecall/state
install -d -m 0755 /etc/edgecall

echo "edgecall: virtualenv in $PREFIX"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    "$PYTHON" -m venv "$PREFIX/venv"
fi
"$PREFIX/venv/bin/python" -m pip install --quiet --upgrade pip
"$PREFIX/venv/bin/python" -m pip install --quiet "$REPO"
install -d -m 0755 "$PREFIX/docs"
install -m 0644 "$REPO/docs/daemon.md" "$PREFIX/docs/daemon.md" 2>/dev/null || true

echo "edgecall: configuration /etc/edgecall/edgecall.env"
if [ ! -f /etc/edgecall/edgecall.env ]; then
    install -m 0640 -g edgecall "$HERE/edgecall.env" /etc/edgecall/edgecall.env
else
    echo "  kept the existing file (new example: $HERE/edgecall.env)"
fi

echo "edgecall: unit /etc/systemd/system/edgecall.service"
sed "s#/opt/edgecall#$PREFIX#g" "$HERE/edgecall.service" > /etc/systemd/system/edgecall.service
chmod 0644 /etc/systemd/system/edgecall.service
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /etc/systemd/system/edgecall.service
fi
systemctl daemon-reload
if [ "$START" -eq 1 ]; then
    systemctl enable --now edgecall.service
    systemctl --no-pager status edgecall.service || true
else
    systemctl enable edgecall.service
fi
echo "edgecall: done. Logs: journalctl -u edgecall -f   Metrics: curl -s 127.0.0.1:9464/metrics"
