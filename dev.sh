#!/usr/bin/env bash
# pginfra's two commands on a fresh Debian 12 machine, as root:
#
#   ./dev.sh rehearse   install what is needed, boot a rehearsal host and provision it
#   ./dev.sh test       install what is needed, then run the whole test suite
#
# Both install Debian packages and a virtualenv (.venv) only when something is missing, so they
# can be run again at any time. Other commands:
#
#   ./dev.sh down       stop the rehearsal hosts and remove everything they made
#   ./dev.sh vm         the same rehearsal on a libvirt VM with Vagrant (pg1; the box is
#                       built here from Debian's packages, once), provisioned
#   ./dev.sh vm-down    destroy the Vagrant VMs
#   ./dev.sh test-vm    the whole VM rehearsal test (the suite runs its short form): about
#                       45 minutes under plain emulation
#   ./dev.sh setup      only install what is needed
#
# Environment: HOSTS=N boots N rehearsal hosts (default 1).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'dev.sh: error: %s\n' "$*" >&2; exit 2; }

VENV=.venv
# Tools the rehearsal hosts need on this machine, and Debian's Python for the virtualenv.
HOST_PACKAGES=(debootstrap systemd-container iptables iproute2 openssh-client ca-certificates
               python3 python3-venv)
# Vagrant VM rehearsals: libvirt and QEMU (KVM or plain emulation), Vagrant's libvirt provider,
# and what builds the box (qemu-img; mkfs.ext4 is Debian's e2fsprogs, always there).
VM_PACKAGES=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86
             qemu-utils dnsmasq-base)
# Only the test suite needs these: `vagrant validate` checks the Vagrantfile; the host programs'
# unit tests run throwaway PostgreSQL 15 clusters here (Debian's postgresql-15 must not create
# and start a cluster of its own: see no_debian_cluster), and run the programs as on a host, with
# Debian's python3 and the modules the deploy installs there, and the real pgBackRest they drive.
TEST_PACKAGES=(vagrant postgresql-15 python3-psycopg python3-boto3 pgbackrest patroni haproxy
               keepalived "${VM_PACKAGES[@]}")

preflight() {
    [ "$(uname -s)" = Linux ] || die "pginfra's rehearsal hosts need Linux"
    [ "$(id -u)" -eq 0 ] || die "run as root: rehearsal hosts need debootstrap, nspawn and iptables"
    command -v apt-get >/dev/null || die "this is not a Debian machine (no apt-get)"
}

install_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages present: $*"
        return
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

setup_venv() {
    local stamp="$VENV/.pginfra-installed" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating the virtualenv $VENV with /usr/bin/python3"
        /usr/bin/python3 -m venv "$VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        say "Python packages present in $VENV"
        return
    fi
    say "installing pginfra and its test tools into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
}

setup() {
    preflight
    install_packages "${HOST_PACKAGES[@]}" "$@"
    setup_venv
}

rehearse() {
    setup
    export PATH="$PWD/$VENV/bin:$PATH"
    say "booting ${HOSTS:-1} rehearsal host(s)"
    pginfra rehearsal up --hosts "${HOSTS:-1}"
    say "passwords for the rehearsal's roles (git-ignored .pginfra/secrets.yaml, mode 0600)"
    pginfra secrets init postgres app pgbouncer_admin replicator backup_cipher_pass
    say "provisioning them: pyinfra -y inventories/rehearsal.py deploys/postgres.py"
    pyinfra -y inventories/rehearsal.py deploys/postgres.py
    say "done. Next:"
    cat <<EOF
    $VENV/bin/pginfra rehearsal status           # hosts and addresses
    $VENV/bin/pginfra rehearsal ssh pg1          # a shell on pg1
    $VENV/bin/pytest tests/host --hosts=ssh://pg1 --ssh-config=/var/lib/pginfra/rehearsal/ssh_config
    ./dev.sh down                                # remove the rehearsal hosts
EOF
}

vm() {
    setup "${VM_PACKAGES[@]}"
    export PATH="$PWD/$VENV/bin:$PATH"
    say "booting the Vagrant VM pg1 with libvirt (pginfra vm up pg1)"
    pginfra vm up pg1
    say "passwords for the rehearsal's roles (git-ignored .pginfra/secrets.yaml, mode 0600)"
    pginfra secrets init postgres app pgbouncer_admin replicator backup_cipher_pass
    say "provisioning it: pyinfra -y inventories/vagrant.py deploys/postgres.py"
    PGINFRA_VAGRANT_KNOWN_HOSTS="$PWD/.vagrant/known_hosts" \
        pyinfra -y inventories/vagrant.py deploys/postgres.py
    vagrant ssh-config pg1 > .vagrant/ssh-config
    say "done. Next:"
    cat <<EOF
    vagrant ssh pg1                                   # a shell on the VM
    $VENV/bin/pytest tests/host --hosts=ssh://pg1 --ssh-config=.vagrant/ssh-config --sudo
    ./dev.sh vm-down                                  # destroy it
EOF
}

no_debian_cluster() {
    if [ ! -e /etc/postgresql-common/createcluster.d/50-pginfra-control.conf ] &&
       ! dpkg-query -W -f='${Status}' postgresql-15 2>/dev/null | grep -q "install ok installed"
    then
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" \
            > /etc/postgresql-common/createcluster.d/50-pginfra-control.conf
    fi
}

run_tests() {
    no_debian_cluster
    setup "${TEST_PACKAGES[@]}"
    export PATH="$PWD/$VENV/bin:$PATH"
    say "ruff check"
    ruff check .
    say "pytest: unit tests, then the end-to-end rehearsal (boots its own host)"
    pytest "$@"
}

case "${1:-}" in
    rehearse) shift; rehearse "$@" ;;
    test) shift; run_tests "$@" ;;
    down) preflight; "$VENV/bin/pginfra" rehearsal down ;;
    vm) shift; vm "$@" ;;
    vm-down) preflight; "$VENV/bin/pginfra" vm down ;;
    test-vm) shift; PGINFRA_E2E_VM=full run_tests tests/e2e/test_vagrant_vm.py "$@" ;;
    setup) setup ;;
    *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
