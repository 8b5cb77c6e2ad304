#!/usr/bin/env bash
# Remove what deploy/install.sh installed.
#
#   sudo deploy/uninstall.sh             stop and disable the units (ExecStopPost= drives the outputs
#                                        off), remove them and /opt/relaxd; KEEP the configuration
#                                        /etc/relaxd and the session records /var/lib/relaxd
#   sudo deploy/uninstall.sh --purge     also remove /etc/relaxd, /var/lib/relaxd and the users
#   deploy/uninstall.sh --dry-run        print every action, change nothing
#   deploy/uninstall.sh --root DIR       remove the files under DIR (tests); systemctl and userdel are
#                                        printed, not run
#
# apt packages stay: other software may use them.
set -euo pipefail

readonly PREFIX=/opt/relaxd
readonly UNIT_DIR=/etc/systemd/system
readonly UNITS=(relaxd.service relaxd-alert@.service relaxd-panel.service)
readonly DATA=(/etc/relaxd /var/lib/relaxd /var/cache/relaxd-panel)

ROOT=""
DRY_RUN=0
PURGE=0

usage() {
    cat <<EOF
usage: $0 [--purge] [--dry-run] [--root DIR]

Remove relaxd. Keeps /etc/relaxd and /var/lib/relaxd (configuration, session records) unless --purge.
  --purge         also remove the configuration, the session records and the users relaxd, relaxd-panel
  --dry-run       print every action without doing it
  --root DIR      remove the files under DIR (tests); system commands are printed, not run
EOF
}

die() {
    echo "uninstall.sh: error: $*" >&2
    exit 2
}

say() {
    echo "$*"
}

while (($#)); do
    case $1 in
        --purge) PURGE=1 ;;
        --dry-run) DRY_RUN=1 ;;
        --root)
            [[ $# -ge 2 && -d ${2:-} ]] || die "--root needs an existing directory"
            ROOT=$(cd "$2" && pwd)
            shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

system() {  # a command that changes the system beyond our files
    if ((DRY_RUN)); then
        say "would run: $*"
    elif [[ -n $ROOT ]]; then
        say "skip (--root): $*"
    else
        say "run: $*"
        "$@"
    fi
}

remove() {  # PATH: remove a file, link or directory tree (under --root DIR when given)
    local path=$ROOT$1
    if [[ ! -e $path && ! -L $path ]]; then
        say "absent $1"
    elif ((DRY_RUN)); then
        say "would remove $1"
    else
        say "remove $1"
        rm -rf -- "$path"
    fi
}

if ((!DRY_RUN)) && [[ -z $ROOT && $EUID -ne 0 ]]; then
    die "run as root: sudo $0 (or try --dry-run first)"
fi
if ((DRY_RUN)); then
    say "dry run: nothing is changed"
fi

say "== services"
# Stopping relaxd runs its ExecStopPost= (relaxd safe-state) while the venv still exists.
# "|| true": a unit that is not installed or not running is not an error here.
if [[ -z $ROOT ]] && ((!DRY_RUN)); then
    say "run: systemctl disable --now relaxd-panel.service relaxd.service"
    systemctl disable --now relaxd-panel.service relaxd.service || true
else
    system systemctl disable --now relaxd-panel.service relaxd.service
fi
for unit in "${UNITS[@]}"; do
    remove "$UNIT_DIR/$unit"
done
system systemctl daemon-reload
if [[ -z $ROOT ]] && ((!DRY_RUN)); then
    systemctl reset-failed 'relaxd*' 2>/dev/null || true
fi

say "== program"
remove "$PREFIX"

say "== data"
if ((PURGE)); then
    for path in "${DATA[@]}"; do
        remove "$path"
    done
    for user in relaxd-panel relaxd; do
        if [[ -n $ROOT ]] || id -u "$user" >/dev/null 2>&1; then
            system userdel "$user"
        fi
    done
else
    for path in "${DATA[@]}"; do
        if [[ -e $ROOT$path ]]; then
            say "keep $path (remove it with --purge)"
        fi
    done
fi
say "== done"
