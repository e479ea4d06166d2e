#!/usr/bin/env bash
# Installs pmig: builds it (release) and places the two commands, the library and the restore
# engine together, with their man pages:
#
#   PREFIX/bin/pmig-run, PREFIX/bin/pmig-resume
#   PREFIX/lib/pmig/libpmig.so, PREFIX/lib/pmig/pmig-restore-engine
#   PREFIX/lib/pmig/.debug/*.debug            (their debug info, found by gdb)
#   PREFIX/share/man/man1/pmig-run.1, pmig-resume.1
#
# pmig-run finds libpmig.so, and pmig-resume the engine, in ../lib/pmig/ from themselves.
# libpmig.so is loaded into every program pmig runs: it is installed without debug info,
# which stays in a separate file (objcopy --only-keep-debug, linked by .gnu_debuglink).
#
# usage: ./install.sh [--prefix DIR] [--profile release|debug] [--no-build]
#   --prefix DIR   where to install (default: $PREFIX, else /usr/local)
#   --profile P    the cargo profile to build and install (default: release)
#   --no-build     install what is already built (in ${CARGO_TARGET_DIR:-target}/PROFILE)
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
prefix=${PREFIX:-/usr/local}
profile=release
build=1
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --profile) profile=${2:?--profile needs a name}; shift 2 ;;
        --profile=*) profile=${1#*=}; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $profile in
    release) dir=release; cargo_profile=release ;;
    debug|dev) dir=debug; cargo_profile=dev ;;
    *) dir=$profile; cargo_profile=$profile ;;
esac
if ! command -v objcopy >/dev/null; then
    echo "install.sh: objcopy is missing (it separates the debug info): apt-get install binutils" >&2
    exit 1
fi
target=${CARGO_TARGET_DIR:-$root/target}
if [ $build = 1 ]; then
    (cd "$root" && cargo build --workspace --profile "$cargo_profile")
fi
from=$target/$dir
for f in pmig-run pmig-resume libpmig.so pmig-restore-engine; do
    [ -f "$from/$f" ] || { echo "install.sh: $from/$f is missing: build first (cargo build --workspace --profile $cargo_profile)" >&2; exit 1; }
done

bin=$prefix/bin
lib=$prefix/lib/pmig
man=$prefix/share/man/man1
mkdir -p "$bin" "$lib/.debug" "$man"
install -m 0755 "$from/pmig-run" "$from/pmig-resume" "$bin/"
# The library and the engine: debug info into .debug/NAME.debug, the installed file
# stripped of it and pointing at it. Written under a temporary name, then renamed, so a
# program starting meanwhile never maps a half-written library.
for f in libpmig.so pmig-restore-engine; do
    objcopy --only-keep-debug "$from/$f" "$lib/.debug/$f.debug"
    chmod 0644 "$lib/.debug/$f.debug"
    objcopy --strip-debug --add-gnu-debuglink="$lib/.debug/$f.debug" "$from/$f" "$lib/.$f.new"
    chmod 0755 "$lib/.$f.new"
    mv -f "$lib/.$f.new" "$lib/$f"
done
# Man pages: made from each command's --help text.
"$bin/pmig-run" --help-man > "$man/pmig-run.1"
"$bin/pmig-resume" --help-man > "$man/pmig-resume.1"
chmod 0644 "$man/pmig-run.1" "$man/pmig-resume.1"
echo "pmig installed in $prefix: $bin/pmig-run, $bin/pmig-resume (man pmig-run, man pmig-resume)"
case ":$PATH:" in *":$bin:"*) ;; *) echo "($bin is not on your PATH)" ;; esac
