#!/usr/bin/env bash
# Installs the Debian packages pmig's tests (or, with --demo, examples/demo.sh) need, those
# missing: with apt-get as root, through sudo otherwise; without either, says exactly what
# to install and fails.
#
# Tests: gcc builds the C test programs; python3, perl, sqlite3, redis-server, memcached and
# nginx and PostgreSQL are test subjects (unmodified programs from Debian; memcached -u tests
# set*id under pmig, nginx and postgres trees of processes);
# setpriv and unshare (util-linux) run the unprivileged and two-host tests, ip (iproute2)
# makes their network namespaces; sshd and ssh (openssh) carry the move through ssh.
# Demo: gcc builds the example program.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if [ "${1:-}" != --demo ]; then
    [ -x /usr/sbin/sshd ] || need+=(openssh-server)
    command -v ssh >/dev/null || need+=(openssh-client)
    [ -x /usr/bin/python3 ] || need+=(python3)
    [ -x /usr/bin/perl ] || need+=(perl)
    [ -x /usr/bin/sqlite3 ] || need+=(sqlite3)
    [ -x /usr/bin/redis-server ] || need+=(redis-server)
    [ -x /usr/bin/memcached ] || need+=(memcached)
    [ -x /usr/sbin/nginx ] || need+=(nginx-light)
    ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql-15)
    [ -x /usr/bin/psql ] || need+=(postgresql-client-15)
    command -v setpriv >/dev/null || need+=(util-linux)
    command -v ip >/dev/null || need+=(iproute2)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
    as_root=()
elif command -v sudo >/dev/null; then
    as_root=(sudo)
else
    echo "deps.sh: missing Debian packages, and no sudo to install them; as root, run:" >&2
    echo "    apt-get update && apt-get install -y ${need[*]}" >&2
    exit 1
fi
echo "deps.sh: installing ${need[*]}" >&2
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
