#!/usr/bin/env bash
# Installs the system packages the engine, the CLI and the test suite need on Debian 12, as root.
# Safe to re-run: apt runs only when something is missing.
set -euo pipefail

PACKAGES=(
  ca-certificates   # TLS roots for registries
  git               # git sources
  runc              # container execution
  tini              # /usr/bin/tini-static: the exec's PID 1, bind-mounted at /.init
  util-linux        # mount, unshare, setpriv (tests)
  nftables          # exec network: NAT (masquerade) rules
  iproute2          # network tests: ip link/addr/netns
  mount
  python3           # the Python SDK tests
  python3-venv
  curl
  docker-registry   # registry tests: a real registry on loopback
  skopeo            # registry tests: pushing test images
  umoci             # registry tests: building test images offline
  busybox-static    # the test images' contents
  openssl           # registry tests: TLS certificates, token signing
  apache2-utils     # registry tests: htpasswd (bcrypt) for Basic auth
  openssh-client    # git over ssh (the engine runs ssh with the client's agent)
  openssh-server    # git tests: an sshd of their own on 127.0.0.1 (the service is not started)
  podman            # publish tests: pulls and runs a published image
  docker.io         # runner-image tests: a private dockerd builds and runs the Dockerfile's image
  debootstrap       # runner-image tests: the Debian base image, built from the Debian mirror
)

if [[ $(id -u) != 0 ]]; then
  echo "install-deps: run as root (it installs Debian packages)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Only sshd's binary is wanted: keep package scripts from starting services (an ssh server
  # on port 22) on a machine that has no policy of its own.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Rust toolchain comes from rustup (Debian's cargo is too old for this workspace).
if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
  echo "install-deps: add \$HOME/.cargo/bin to PATH" >&2
fi
if ! command -v cargo >/dev/null 2>&1 && ! [[ -x $HOME/.cargo/bin/cargo ]]; then
  echo "install-deps: cargo not found; install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
