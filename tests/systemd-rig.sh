#!/usr/bin/env bash
# A real systemd as PID 1 in private namespaces, to test relaunch's units
# against the real thing (tests/it/systemd.rs). Needs root.
#
#   tests/systemd-rig.sh check          exit 0 if this machine can run a rig, else say what is missing
#   tests/systemd-rig.sh boot DIR       boot in the foreground (returns when the rig's systemd is gone)
#   tests/systemd-rig.sh up DIR         boot in the background; return once systemd is running
#   tests/systemd-rig.sh run DIR CMD... run CMD inside the rig (its namespaces and root)
#   tests/systemd-rig.sh down DIR       kill the rig, wait until its cgroup is empty, remove it
#
# DIR is an empty folder of the caller's, one per rig: it holds the rig's state, and
# its name names the rig's cgroup, so two rigs never share anything.
#
# How: `unshare --pid --fork --kill-child --mount --propagation private --uts --ipc --net`
# runs this script as PID 1 of a new pid namespace. It moves itself into
# <cgroup2>/relaunch-rig-<DIR's name>/payload (the only thing made outside DIR, removed by
# `down`), enters a new cgroup namespace rooted there, and builds a root: an overlay
# of / with a tmpfs on top (nothing written inside reaches the disk; an empty
# fstab), fresh /proc
# (sys, sysrq-trigger, irq, bus, fs read-only), read-only sysfs, cgroup2 read-write,
# a small tmpfs /dev, tmpfs /run and /tmp. Units that touch the host (udev, sysctl,
# modules, time, logind, networking, ...) are masked, the host's enablements
# dropped. Then pivot_root and exec systemd with container=other and a bounding set
# without the capabilities that reach the host (time, modules, raw I/O, ...).
# systemd 252 boots in about half a second this way. The network namespace has
# only lo; reach services from a thread that joined /proc/PID/ns/net.
# Files go in through /proc/<PID 1>/root/..., as root.
set -euo pipefail

SELF="$(readlink -f "$0")"
SYSTEMD=/lib/systemd/systemd
DROP_CAPS="-sys_module,-sys_time,-sys_rawio,-syslog,-wake_alarm,-mac_admin,-mac_override,-sys_pacct,-audit_control"
MASK="systemd-modules-load.service systemd-sysctl.service systemd-binfmt.service
  proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount systemd-timesyncd.service
  systemd-pstore.service systemd-random-seed.service systemd-hwdb-update.service
  systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
  systemd-udev-trigger.service systemd-udev-settle.service sys-kernel-debug.mount
  sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount
  dev-hugepages.mount dev-mqueue.mount systemd-remount-fs.service systemd-firstboot.service
  systemd-repart.service systemd-pcrphase.service systemd-pcrphase-sysinit.service
  systemd-machine-id-commit.service systemd-update-utmp.service
  systemd-tmpfiles-clean.timer getty.target console-getty.service getty@.service
  serial-getty@.service systemd-logind.service systemd-networkd.service
  systemd-resolved.service networking.service e2scrub_reap.service"

die() { echo "systemd-rig: $*" >&2; exit 1; }

cg_base() {
  local d
  for d in /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [ "$(stat -f -c %T "$d" 2>/dev/null)" = cgroup2fs ]; then echo "$d"; return; fi
  done
  return 1
}

# What is missing on this machine, one item a line; nothing if all is there.
missing() {
  [ "$(id -u)" = 0 ] || echo "root (the rig makes namespaces and mounts)"
  [ -x "$SYSTEMD" ] || echo "systemd ($SYSTEMD; apt-get install systemd)"
  local t
  for t in unshare nsenter setpriv systemctl journalctl systemd-id128 mount pivot_root; do
    command -v "$t" >/dev/null 2>&1 || echo "$t"
  done
  local base
  if ! base="$(cg_base)"; then
    echo "a cgroup2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified)"
  elif [ ! -w "$base" ]; then
    echo "a writable cgroup2 hierarchy ($base is read-only)"
  fi
  return 0
}

state() { # DIR -> validated absolute DIR
  [ -n "${1:-}" ] || die "give the rig's folder"
  [ -d "$1" ] || die "$1 is not a folder"
  readlink -f "$1"
}

procs() { find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null; }

cgroup_of() { echo "$(cg_base)/relaunch-rig-$(basename "$1")"; }

# The host pid of the rig's PID 1, if it is still ours.
rig_pid() {
  local dir="$1" pid name
  pid="$(cat "$dir/pid" 2>/dev/null)" || return 1
  name="relaunch-rig-$(basename "$dir")"
  grep -q "^0::/$name/" "/proc/$pid/cgroup" 2>/dev/null || return 1
  echo "$pid"
}

cmd_boot() {
  local dir; dir="$(state "${1:-}")"
  local gaps; gaps="$(missing)"
  [ -z "$gaps" ] || die "missing: $(echo "$gaps" | paste -sd, -)"
  local cg; cg="$(cgroup_of "$dir")"
  if [ -e "$cg" ]; then
    # Left by a run that was killed before `down`: reuse the name only if empty.
    [ -z "$(procs "$cg")" ] || die "$cg has processes: another rig uses $dir"
    find "$cg" -depth -type d -exec rmdir {} +
  fi
  mkdir "$cg" "$cg/payload"
  mkdir -p "$dir/root" "$dir/ovl"
  : > "$dir/console"
  exec unshare --pid --fork --kill-child --mount --propagation private --uts --ipc --net \
    bash "$SELF" _pid1 "$dir" </dev/null
}

# PID 1 of the new pid namespace, still in the host's cgroup namespace and /proc.
cmd_pid1() {
  local dir="$1" hostpid _rest
  read -r hostpid _rest < /proc/self/stat
  echo 0 > "$(cgroup_of "$dir")/payload/cgroup.procs"
  echo "$hostpid" > "$dir/pid.new"
  exec unshare --cgroup bash "$SELF" _root "$dir"
}

# Now in a cgroup namespace rooted at payload/: build the root and exec systemd.
cmd_root() {
  local dir="$1" R="$1/root" b u
  mount -t tmpfs -o mode=755 rig-ovl "$dir/ovl"
  mkdir -p "$dir/ovl/upper" "$dir/ovl/work"
  mount -t overlay -o "lowerdir=/,upperdir=$dir/ovl/upper,workdir=$dir/ovl/work" rig-root "$R"

  mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
  for b in sys sysrq-trigger irq bus fs; do
    [ -e "$R/proc/$b" ] || continue
    mount --bind "$R/proc/$b" "$R/proc/$b"
    mount -o remount,bind,ro "$R/proc/$b"
  done
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
  mount -t cgroup2 -o rw,nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"

  mount -t tmpfs -o mode=755,nosuid,size=8m rig-dev "$R/dev"
  mknod -m 666 "$R/dev/null" c 1 3; mknod -m 666 "$R/dev/zero" c 1 5
  mknod -m 666 "$R/dev/full" c 1 7; mknod -m 666 "$R/dev/random" c 1 8
  mknod -m 666 "$R/dev/urandom" c 1 9; mknod -m 666 "$R/dev/tty" c 5 0
  ln -s /proc/self/fd "$R/dev/fd"; ln -s /proc/self/fd/0 "$R/dev/stdin"
  ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
  mkdir -p "$R/dev/pts" "$R/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$R/dev/pts"
  ln -s pts/ptmx "$R/dev/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev rig-shm "$R/dev/shm"
  # Not a terminal: systemd says so once and uses /dev/null; the journal has the rest.
  touch "$R/dev/console"; mount --bind "$dir/console" "$R/dev/console"
  mount -t tmpfs -o mode=755,nosuid,nodev rig-run "$R/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev rig-tmp "$R/tmp"

  systemd-id128 new > "$R/etc/machine-id"
  : > "$R/etc/fstab"   # the host's disks and swap are not the rig's to mount
  hostname relaunch-rig
  local E="$R/etc/systemd/system"
  rm -rf "$E"/*.wants "$E/default.target"
  for u in $MASK; do ln -sf /dev/null "$E/$u"; done

  # Published only now, so `run` never enters a half-built root.
  mv "$dir/pid.new" "$dir/pid"
  cd "$R"; mkdir -p .oldroot
  pivot_root . .oldroot
  cd /
  umount -l /.oldroot; rmdir /.oldroot
  exec env -i container=other TERM=dumb \
    setpriv --bounding-set "$DROP_CAPS" "$SYSTEMD" --system --unit=basic.target --show-status=0
}

cmd_run() {
  local dir; dir="$(state "${1:-}")"; shift
  [ $# -gt 0 ] || die "run: give a command"
  local pid; pid="$(rig_pid "$dir")" || die "no rig is up in $dir"
  exec nsenter --target "$pid" --all --root --wd -- \
    setpriv --bounding-set "$DROP_CAPS" env -i \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      TERM=dumb SYSTEMD_PAGER=cat PAGER=cat SYSTEMD_COLORS=0 LANG=C.UTF-8 HOME=/root "$@"
}

cmd_up() {
  local dir; dir="$(state "${1:-}")"
  setsid bash "$SELF" boot "$dir" >"$dir/boot.log" 2>&1 &
  local i st=""
  for i in $(seq 1 300); do
    if rig_pid "$dir" >/dev/null; then
      st="$(cmd_run "$dir" systemctl is-system-running 2>/dev/null)" || true
      case "$st" in running|degraded) echo "rig up: host pid $(cat "$dir/pid"), $st"; return 0;; esac
    fi
    kill -0 $! 2>/dev/null || { cat "$dir/boot.log" >&2; die "the rig died while booting"; }
    sleep 0.05
  done
  die "not running after 15 s (state: ${st:-none}); see $dir/boot.log"
}

cmd_down() {
  local dir; dir="$(state "${1:-}")"
  local pid i
  if pid="$(rig_pid "$dir")"; then
    # SIGKILL to PID 1 kills every process of the pid namespace.
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 200); do [ -d "/proc/$pid" ] || break; sleep 0.05; done
  fi
  local cg; cg="$(cgroup_of "$dir")"
  if [ -d "$cg" ]; then
    local left=""
    for i in $(seq 1 200); do
      left="$(procs "$cg")"
      [ -n "$left" ] || break
      sleep 0.05
    done
    [ -z "$left" ] || die "processes left in $cg: $(echo "$left" | paste -sd' ' -)"
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$cg" ] || die "could not remove $cg"
  fi
  rm -f "$dir/pid" "$dir/pid.new"
}

case "${1:-}" in
  check) gaps="$(missing)"; [ -z "$gaps" ] || { echo "$gaps"; exit 1; } ;;
  boot) shift; cmd_boot "$@" ;;
  up) shift; cmd_up "$@" ;;
  run) shift; cmd_run "$@" ;;
  down) shift; cmd_down "$@" ;;
  _pid1) shift; cmd_pid1 "$@" ;;
  _root) shift; cmd_root "$@" ;;
  *) sed -n '2,9p' "$SELF" >&2; exit 2 ;;
esac
