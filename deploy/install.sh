#!/usr/bin/env bash
# Install (or upgrade) relaxd on the chair's Raspberry Pi: Raspberry Pi OS Bookworm, 64-bit.
#
#   sudo deploy/install.sh               install or upgrade; running it again changes nothing
#   deploy/install.sh --dry-run          print every action, change nothing
#   deploy/install.sh --root DIR         write the files under DIR instead of / (for tests): apt,
#                                        users, the virtualenv, pip and systemctl are printed, not run
#
# What ends up where:
#   /opt/relaxd/venv                     virtualenv (--system-site-packages: it sees apt's picamera2,
#                                        libcamera and lgpio) with relaxd[pi] and a TFLite runtime
#   /opt/relaxd/constraints.txt          pins that keep the venv compatible with apt's picamera2
#   /opt/relaxd/models/                  the emotion model (models/DEFAULT names it) + its .json;
#                                        current.tflite / current.json point at it
#   /etc/relaxd/relaxd.yaml              from deploy/relaxd.pi.yaml, only if there is none yet
#   /etc/systemd/system/relaxd*.service  the units from systemd/, enabled (never started or
#                                        restarted here: a child may be in the chair)
#   /var/lib/relaxd                      the session database (kept by uninstall.sh unless --purge)
# and the system users relaxd (daemon) and relaxd-panel (touchscreen panel).
set -euo pipefail

readonly PREFIX=/opt/relaxd
readonly VENV=$PREFIX/venv
readonly MODELS=$PREFIX/models
readonly CONFIG=/etc/relaxd/relaxd.yaml
readonly STATE=/var/lib/relaxd
readonly UNIT_DIR=/etc/systemd/system
readonly UNITS=(relaxd.service relaxd-alert@.service relaxd-panel.service)
# Groups the units name in SupplementaryGroups=; systemd refuses to start a unit if one is missing.
readonly DEVICE_GROUPS=(gpio video render audio dialout input)
readonly APT_PACKAGES=(
    python3-venv python3-pip python3-dev
    python3-picamera2 python3-libcamera   # the camera: only as apt packages (built for the Pi's libcamera)
    python3-gpiozero python3-lgpio        # GPIO through /dev/gpiochip*
    libsdl2-2.0-0 libsdl2-mixer-2.0-0 libsdl2-ttf-2.0-0 libsdl2-image-2.0-0  # pygame: sound, panel
    fonts-dejavu-core                     # the panel's font
    curl                                  # relaxd-alert@.service's webhook
)

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=""
DRY_RUN=0
PANEL=1
MODEL=""

usage() {
    cat <<EOF
usage: $0 [--dry-run] [--root DIR] [--model FILE.tflite] [--no-panel]

Install or upgrade relaxd on Raspberry Pi OS Bookworm (64-bit). Run as root.
  --dry-run       print every action without doing it
  --root DIR      install the files under DIR (tests); system commands are printed, not run
  --model FILE    the .tflite to install (its .json metadata beside it);
                  default: the one models/DEFAULT names in $SRC
  --no-panel      do not enable the touchscreen panel (relaxd-panel.service)
EOF
}

die() {  # usage or preflight error: nothing has been changed yet
    echo "install.sh: error: $*" >&2
    exit 2
}

fail() {  # a step failed halfway
    echo "install.sh: failed: $*" >&2
    exit 1
}

say() {
    echo "$*"
}

while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --root)
            [[ $# -ge 2 && -d ${2:-} ]] || die "--root needs an existing directory"
            ROOT=$(cd "$2" && pwd)
            shift ;;
        --model)
            [[ $# -ge 2 ]] || die "--model needs a .tflite file"
            MODEL=$2
            shift ;;
        --no-panel) PANEL=0 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

# ----------------------------------------------------------------------------- helpers

real() {  # true when this run changes the real system (not --dry-run, not --root)
    ((!DRY_RUN)) && [[ -z $ROOT ]]
}

on_this_system() {  # true unless --root: read-only checks of users, groups and systemd are meaningful
    [[ -z $ROOT ]]
}

on_disk() {  # the path of an installed file on disk (under --root DIR when given)
    printf '%s%s' "$ROOT" "$1"
}

system() {  # a command that changes the system beyond our files: apt, users, venv, pip, systemctl
    if ((DRY_RUN)); then
        say "would run: $*"
    elif [[ -n $ROOT ]]; then
        say "skip (--root): $*"
    else
        say "run: $*"
        "$@"
    fi
}

make_dir() {  # MODE OWNER DIR
    local mode=$1 owner=$2 dir=$3 path
    path=$(on_disk "$dir")
    if [[ -d $path && $(stat -c %a "$path") == "$mode" ]] &&
        { [[ -n $ROOT ]] || [[ $(stat -c %U:%G "$path") == "$owner" ]]; }; then
        say "unchanged $dir"
    elif ((DRY_RUN)); then
        say "would create $dir (mode $mode, owner $owner)"
    else
        if [[ -d $path ]]; then say "set mode/owner of $dir"; else say "create $dir"; fi
        mkdir -p "$path"
        chmod "$mode" "$path"
        [[ -n $ROOT ]] || chown "$owner" "$path"
    fi
}

CHANGED=0
install_file() {  # MODE OWNER SOURCE DEST: copy unless DEST already has that content and mode; sets CHANGED
    local mode=$1 owner=$2 src=$3 dest=$4 path
    path=$(on_disk "$dest")
    CHANGED=0
    if [[ -f $path && ! -L $path ]] && cmp -s "$src" "$path" && [[ $(stat -c %a "$path") == "$mode" ]] &&
        { [[ -n $ROOT ]] || [[ $(stat -c %U:%G "$path") == "$owner" ]]; }; then
        say "unchanged $dest"
        return
    fi
    CHANGED=1
    if ((DRY_RUN)); then
        say "would install $dest (from $src, mode $mode)"
        return
    fi
    say "install $dest"
    if [[ -n $ROOT ]]; then
        install -m "$mode" "$src" "$path"
    else
        install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$src" "$path"
    fi
}

link() {  # TARGET LINK: a relative symlink LINK -> TARGET
    local target=$1 name=$2 path
    path=$(on_disk "$name")
    if [[ -L $path && $(readlink "$path") == "$target" ]]; then
        say "unchanged $name -> $target"
    elif ((DRY_RUN)); then
        say "would link $name -> $target"
    else
        say "link $name -> $target"
        ln -sfn "$target" "$path"
    fi
}

# ----------------------------------------------------------------------------- preflight
# Every check before the first change, so a refusal leaves the system as it was.

if [[ -z $MODEL ]]; then
    [[ -f $SRC/models/DEFAULT ]] || die "no model to install: $SRC/models/DEFAULT not found. Train and export one
  (train-and-export), or pass --model FILE.tflite"
    name=$(tr -d '[:space:]' <"$SRC/models/DEFAULT")
    [[ -n $name ]] || die "$SRC/models/DEFAULT is empty: it must name the .tflite file in $SRC/models"
    MODEL=$SRC/models/$name
fi
[[ $MODEL == *.tflite && -f $MODEL ]] || die "model $MODEL: not a .tflite file that exists"
MODEL_JSON=${MODEL%.tflite}.json
[[ -f $MODEL_JSON ]] || die "model metadata $MODEL_JSON not found: train-and-export writes it beside the .tflite"
MODEL_NAME=$(basename "$MODEL" .tflite)
[[ $MODEL_NAME != current ]] || die "the model must not be called current.tflite (that name is the link to it)"

for unit in "${UNITS[@]}"; do
    [[ -f $SRC/systemd/$unit ]] || die "$SRC/systemd/$unit not found: run this script from a full relaxd checkout"
done
[[ -f $SRC/deploy/relaxd.pi.yaml ]] || die "$SRC/deploy/relaxd.pi.yaml not found"

if real; then
    [[ $EUID -eq 0 ]] || die "run as root: sudo $0 (or try --dry-run first)"
    codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)
    [[ $codename == bookworm ]] || say "warning: made for Raspberry Pi OS Bookworm, this is '${codename:-unknown}'"
    [[ $(uname -m) == aarch64 ]] || say "warning: made for 64-bit Raspberry Pi OS (aarch64), this is $(uname -m)"
fi
if ((DRY_RUN)); then
    say "dry run: nothing is changed"
fi
say "installing relaxd from $SRC${ROOT:+ into $ROOT}"

# ----------------------------------------------------------------------------- system packages and users

say "== packages"
system apt-get update
system apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"

say "== users and groups"
for group in "${DEVICE_GROUPS[@]}"; do
    if on_this_system && getent group "$group" >/dev/null; then
        say "unchanged group $group"
    else
        system groupadd --system -f "$group"
    fi
done
ensure_user() {  # NAME HOME: a system user with its own group and no login
    if on_this_system && id -u "$1" >/dev/null 2>&1; then
        say "unchanged user $1"
    else
        system useradd --system --user-group --home-dir "$2" --no-create-home --shell /usr/sbin/nologin "$1"
    fi
}
ensure_user relaxd "$STATE"
ensure_user relaxd-panel /nonexistent

# ----------------------------------------------------------------------------- files

say "== directories"
make_dir 755 root:root "$PREFIX"
make_dir 755 root:root "$MODELS"
make_dir 755 root:root /etc/relaxd
make_dir 755 root:root "$UNIT_DIR"
make_dir 750 relaxd:relaxd "$STATE"

say "== model"
install_file 644 root:root "$MODEL" "$MODELS/$MODEL_NAME.tflite"
install_file 644 root:root "$MODEL_JSON" "$MODELS/$MODEL_NAME.json"
link "$MODEL_NAME.tflite" "$MODELS/current.tflite"
link "$MODEL_NAME.json" "$MODELS/current.json"

say "== configuration"
if [[ -e $(on_disk "$CONFIG") ]]; then
    say "keep $CONFIG (it exists; compare with deploy/relaxd.pi.yaml after an upgrade)"
else
    install_file 640 root:relaxd "$SRC/deploy/relaxd.pi.yaml" "$CONFIG"
fi

say "== python environment"
# apt's picamera2 uses simplejpeg built against numpy 1.x: numpy 2 in the venv breaks
# "import picamera2" ("numpy.dtype size changed"); opencv-python-headless 4.12 needs numpy 2.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
constraints=$scratch/constraints.txt
cat >"$constraints" <<'EOF'
# Written by deploy/install.sh: keep the venv binary-compatible with apt's python3-picamera2.
numpy<2
opencv-python-headless<4.12
EOF
install_file 644 root:root "$constraints" "$PREFIX/constraints.txt"

pip_install() {
    system "$VENV/bin/pip" install --constraint "$PREFIX/constraints.txt" "$@"
}
if [[ -x $(on_disk "$VENV/bin/python") ]]; then
    say "unchanged $VENV"
else
    system python3 -m venv --system-site-packages "$VENV"
fi
# pip builds a local project inside its folder (egg-info owned by root in the checkout):
# build from a copy of what the package needs instead.
package=$SRC
if real; then
    package=$scratch/relaxd
    mkdir "$package"
    cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/relaxd" "$SRC/tools" "$package/"
fi
# The TFLite runtime, chosen here: ai-edge-litert where it has a wheel for this Pi and Python,
# else tflite-runtime (its last release, 2.14, stops at Python 3.11: Bookworm's).
if ! real; then
    pip_install ai-edge-litert
    say "  (if that fails: $VENV/bin/pip install tflite-runtime, then relaxd[pi] without ai-edge-litert)"
    pip_install "${package}[pi]"
elif say "run: $VENV/bin/pip install ai-edge-litert" &&
    "$VENV/bin/pip" install --constraint "$PREFIX/constraints.txt" ai-edge-litert; then
    pip_install "${package}[pi]"
else
    say "ai-edge-litert is not available for this Pi and Python: using tflite-runtime"
    pip_install tflite-runtime
    # relaxd's dependencies name ai-edge-litert on arm64: install them without it, then relaxd itself.
    mapfile -t deps < <(python3 - "$SRC/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["pi"]:
    if not requirement.replace("_", "-").startswith("ai-edge-litert"):
        print(requirement)
EOF
    )
    pip_install "${deps[@]}"
    pip_install --no-deps "$package"
fi
if real; then
    "$VENV/bin/python" - <<'EOF' || fail "the virtualenv $VENV cannot run relaxd (see the messages above)"
import importlib.util
from relaxd.vision.runtime import RUNTIME_NAME
assert RUNTIME_NAME, "no TFLite runtime could be imported"
print(f"TFLite runtime: {RUNTIME_NAME}")
if importlib.util.find_spec("picamera2") is None:
    print("warning: picamera2 is not importable: apt install python3-picamera2")
EOF
fi

say "== check the configuration"
if ((DRY_RUN)); then
    say "would run: $VENV/bin/relaxd check-config $CONFIG"
else
    checker=$(on_disk "$VENV/bin/relaxd")
    [[ -x $checker ]] || checker=$(command -v relaxd || true)
    if [[ -z $checker ]]; then
        say "skip (--root, no relaxd on PATH): relaxd check-config $CONFIG"
    else
        "$checker" check-config "$(on_disk "$CONFIG")" ||
            fail "$CONFIG is not valid: fix it (deploy/relaxd.example.yaml explains every key), then run this again"
    fi
fi

say "== systemd units"
units_changed=0
for unit in "${UNITS[@]}"; do
    install_file 644 root:root "$SRC/systemd/$unit" "$UNIT_DIR/$unit"
    if ((CHANGED)); then
        units_changed=1
    fi
done
if ((units_changed)); then
    system systemctl daemon-reload
fi
system systemctl enable relaxd.service
if ((!PANEL)); then
    say "panel not enabled (--no-panel)"
elif on_this_system && [[ ! -x $VENV/bin/relaxd-panel ]]; then
    say "panel not enabled: $VENV/bin/relaxd-panel is not installed (this relaxd has no panel yet)"
else
    system systemctl enable relaxd-panel.service
    if on_this_system && [[ $(systemctl get-default 2>/dev/null) == graphical.target ]]; then
        say "warning: the desktop starts at boot and holds the display; the panel draws on the console:"
        say "  sudo systemctl set-default multi-user.target   (see deploy/TROUBLESHOOTING.md, panel)"
    fi
fi

say "== done"
say "Wire the chair as deploy/WIRING.md shows, check $CONFIG, then:"
say "  sudo systemctl restart relaxd      (start, or switch to this version: ends a running session)"
say "  journalctl -u relaxd -f            (follow its log)"
