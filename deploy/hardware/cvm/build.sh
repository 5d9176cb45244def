#!/usr/bin/env bash
# Build a confidential VM whose measured boot covers the Geode Coordinator.
#
# The VM boots directly (no boot loader, no disk image to trust): QEMU hands the firmware a
# kernel, an initrd and a command line, and
#   - on SEV-SNP, OVMF built with kernel hashes (AmdSev) checks them against a table of their
#     SHA-256 hashes that is part of the launch measurement: the measurement covers the firmware,
#     kernel, initrd and command line, computed with `geode measure sev-snp` (sev-snp-measure);
#   - on TDX, the firmware (TDVF) extends the kernel into RTMR1 and the command line and initrd
#     into RTMR2 (MRTD covers the firmware, RTMR0 its configuration): no maintained tool computes
#     them, so the expected values are read from the first boot's evidence (`geode measure
#     evidence`, see docs/hardware.md).
# The initrd is the whole root file system: a pinned Debian base, Python, the Geode wheel built
# from this tree and its dependencies installed by hash (../requirements.lock), and an /init that
# starts `geode coordinator` with fixed arguments. Nothing the host supplies after launch (the
# data disk, the network) can change the code that runs; the data disk only holds sealed state.
#
# Usage (as root, or in a build container; needs mmdebstrap, cpio, gzip, python3 with pip):
#   DEBIAN_MIRROR=<a Debian snapshot archive URL for the pinned date> \
#   deploy/hardware/cvm/build.sh --kernel /path/vmlinuz [--modules /lib/modules/VERSION] \
#       [--ovmf OVMF.fd --vcpus 4 --vcpu-type EPYC-Genoa [--guest-features 0x1]] [--out DIR]
# Outputs in DIR (default deploy/hardware/cvm/out): vmlinuz, initrd.img, cmdline, SHA256SUMS,
# and with --ovmf: expected-sev-snp.yaml (a policy file for `geode verify --policy`).
# The same tree, kernel, mirror date and SOURCE_DATE_EPOCH give the same initrd, byte for byte.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
lock="$here/../requirements.lock"

suite=bookworm            # Debian 12: python3 is CPython 3.11, as requirements.lock expects
python_version=3.11
# Fixed arguments of the Coordinator; they are inside the initrd, hence measured. To change
# them (say --store etcd://...), edit here and rebuild: the measurement changes with them.
coordinator_args=(coordinator --tee auto --data-dir /data/geode
                  --client-addr 0.0.0.0:4433 --mesh-addr 0.0.0.0:2001)
# The kernel configures the network itself (CONFIG_IP_PNP); the console is the serial port.
cmdline="console=ttyS0 ip=dhcp panic=-1 rdinit=/init"

kernel="" modules="" ovmf="" vcpus="" vcpu_type="" guest_features=0x1 out="$here/out"
while (($#)); do
    case "$1" in
        --kernel) kernel=$2; shift 2 ;;
        --modules) modules=$2; shift 2 ;;
        --ovmf) ovmf=$2; shift 2 ;;
        --vcpus) vcpus=$2; shift 2 ;;
        --vcpu-type) vcpu_type=$2; shift 2 ;;
        --guest-features) guest_features=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n $kernel && -f $kernel ]] || { echo "build.sh: --kernel FILE is required" >&2; exit 2; }
[[ -n ${DEBIAN_MIRROR:-} ]] || {
    echo "build.sh: set DEBIAN_MIRROR to a Debian snapshot archive for a fixed date" >&2; exit 2; }
if [[ -n $ovmf && ( -z $vcpus || -z $vcpu_type ) ]]; then
    echo "build.sh: --ovmf needs --vcpus and --vcpu-type (as the VM will be started)" >&2; exit 2
fi
for tool in mmdebstrap cpio gzip python3 sha256sum; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is not installed" >&2; exit 2; }
done

# Every timestamp in the image is this one, so the archive does not depend on the build time.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$work/wheels" "$out"

# 1. The Geode wheel from this tree, and the dependencies' wheels, each checked by hash.
python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "$repo"
python3 -m pip download --quiet --require-hashes --no-deps --only-binary=:all: \
    --implementation cp --python-version "$python_version" --abi cp311 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --dest "$work/wheels" -r "$lock"

# 2. The root file system: a minimal Debian from the pinned snapshot, Geode in /opt/geode.
cat > "$work/init" <<EOF
#!/bin/sh
# The Coordinator VM's init (inside the measured initrd): mount what the TEE interfaces need,
# the data disk, and hand over to the Coordinator with fixed arguments.
set -e
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t configfs configfs /sys/kernel/config   # configfs-tsm: SNP and TDX quotes
mount -t tmpfs tmpfs /tmp
for module in sev-guest tdx-guest tsm virtio_blk virtio_net ext4; do
    modprobe -q "\$module" 2>/dev/null || true       # built in, or not this TEE
done
# /dev/vda: the data disk the host gives; it holds only sealed state and the audit log.
blkid /dev/vda >/dev/null 2>&1 || mkfs.ext4 -q /dev/vda
mkdir -p /data && mount /dev/vda /data && mkdir -p /data/geode
# -I: no environment variable, user site or current directory reaches Python; -B: no .pyc
exec /opt/geode/bin/python -I -B -m geode ${coordinator_args[*]}
EOF

mmdebstrap --variant=minbase --mode=auto \
    --include=python3,python3-venv,kmod,e2fsprogs,util-linux,iproute2 \
    --customize-hook="copy-in $work/wheels /opt" \
    --customize-hook='chroot "$1" python3 -m venv /opt/geode' \
    --customize-hook='chroot "$1" /opt/geode/bin/python -m pip install --quiet --no-index --no-deps --no-compile /opt/wheels/*.whl' \
    --customize-hook='chroot "$1" /opt/geode/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/geode' \
    --customize-hook='rm -rf "$1/opt/wheels" "$1/var/cache/apt" "$1/var/lib/apt/lists" "$1/var/log"/*' \
    --customize-hook="copy-in $work/init /" \
    --customize-hook='chmod 0755 "$1/init"' \
    "$suite" "$root" "$DEBIAN_MIRROR"

if [[ -n $modules ]]; then
    mkdir -p "$root/lib/modules"
    cp -a "$modules" "$root/lib/modules/"
fi

# 3. A reproducible archive: sorted names, one timestamp, owner root, no gzip name or time.
find "$root" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
    cpio --quiet --null --create --format=newc --reproducible --owner=0:0) |
    gzip -9 --no-name > "$out/initrd.img"
cp "$kernel" "$out/vmlinuz"
printf '%s' "$cmdline" > "$out/cmdline"
(cd "$out" && sha256sum vmlinuz initrd.img cmdline > SHA256SUMS)
cat "$out/SHA256SUMS"

# 4. SEV-SNP: the launch measurement to expect, as a policy file.
if [[ -n $ovmf ]]; then
    geode measure sev-snp --ovmf "$ovmf" --kernel "$out/vmlinuz" --initrd "$out/initrd.img" \
        --append "$cmdline" --vcpus "$vcpus" --vcpu-type "$vcpu_type" \
        --guest-features "$guest_features" \
        > "$out/expected-sev-snp.yaml"
    echo "expected SEV-SNP values: $out/expected-sev-snp.yaml"
fi
