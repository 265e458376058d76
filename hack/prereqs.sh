#!/usr/bin/env bash
# What the local environment (make demo, test, test-e2e, dev-up, bench) needs on a Debian machine, checked
# before any long build. As root, missing Debian packages are installed with apt-get; otherwise one line
# names them and the command to run, and the exit status is 2. Go and Python are not installed here: one
# line says what is missing.
#
#   hack/prereqs.sh            check, install what is missing (root)
#   hack/prereqs.sh --dry-run  check, print the install command instead of running it (exit 2 if needed)
#   hack/prereqs.sh --only CMD...  check (and install) only the packages of these commands, root not required
#
# PYTHON names the interpreter the Makefile uses (default python3).
set -euo pipefail

# command -> Debian package, for every command the environment runs.
REQUIRED=(
  "docker-registry docker-registry" # the registry replicas (CNCF distribution)
  "htpasswd apache2-utils"          # the replicas' bcrypt htpasswd files
  "containerd containerd"           # the nodes' container runtime
  "ctr containerd"                  # importing the sandbox image into containerd
  "runc runc"                       # the OCI runtime behind containerd
  "unshare util-linux"              # the private mount namespace holding the names
  "nsenter util-linux"              # running commands in it (.dev/run)
  "mount mount"                     # bind-mounting its /etc/hosts
  "getent libc-bin"                 # resolving names inside it (tests)
  "make make"
  "git git"
  "buildah buildah"       # make image: the Dockerfile built without a daemon (hack/image/)
  "skopeo skopeo"         # make image-push, and the layout's digests
  "umoci umoci"           # unpacking the built image to run it
  "mmdebstrap mmdebstrap" # the image's local Debian base
)
MIN_PYTHON=3.11
MIN_GO=1.21 # older Go cannot fetch the toolchain hack/controlplane/go.mod asks for

dry_run=false
only=()
case ${1:-} in
--dry-run) dry_run=true ;;
--only) only=("${@:2}") ;;
esac
python=${PYTHON:-python3}

fail() {
  echo "geopin prerequisites: $*" >&2
  exit 2
}

version_at_least() { # $1 >= $2, both MAJOR.MINOR
  local IFS=.
  read -r -a have <<<"$1"
  read -r -a want <<<"$2"
  ((have[0] > want[0] || (have[0] == want[0] && have[1] >= want[1])))
}

# -- Python -----------------------------------------------------------------------------------------
command -v "$python" >/dev/null ||
  fail "Python $MIN_PYTHON or newer is needed and '$python' is not on PATH (set PYTHON=/path/to/python3.11)"
py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
version_at_least "$py_version" "$MIN_PYTHON" ||
  fail "Python $MIN_PYTHON or newer is needed; '$python' is $py_version (set PYTHON=/path/to/python3.11)"

# -- Go ---------------------------------------------------------------------------------------------
if ! command -v go >/dev/null; then
  [[ -x /usr/local/go/bin/go ]] && fail "Go is installed in /usr/local/go but not on PATH: export PATH=\$PATH:/usr/local/go/bin"
  fail "Go $MIN_GO or newer is needed to build the control plane and the kubelet (https://go.dev/doc/install)"
fi
go_version=$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
version_at_least "$go_version" "$MIN_GO" || fail "Go $MIN_GO or newer is needed; 'go' is $go_version"

# -- Debian packages --------------------------------------------------------------------------------
missing=()
for entry in "${REQUIRED[@]}"; do
  read -r cmd package _ <<<"$entry"
  if ((${#only[@]})) && [[ " ${only[*]} " != *" $cmd "* ]]; then continue; fi
  command -v "$cmd" >/dev/null || missing+=("$package")
done
# `python -m venv` needs ensurepip, which Debian ships apart (python3.X-venv) for its own interpreter.
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  [[ $(command -v "$python") == /usr/bin/* ]] ||
    fail "'$python' cannot create virtual environments (no ensurepip); use an interpreter that can (PYTHON=...)"
  missing+=("python$py_version-venv")
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

if ((${#missing[@]})); then
  install=(apt-get install -y --no-install-recommends "${missing[@]}")
  if $dry_run; then
    echo "geopin prerequisites: would run: apt-get update && ${install[*]}"
    exit 2
  fi
  if (($(id -u) != 0)); then
    fail "missing Debian packages ${missing[*]}; install them with: sudo apt-get update && sudo ${install[*]}"
  fi
  echo "geopin prerequisites: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || fail "apt-get update failed (is a Debian mirror reachable?)"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    fail "apt-get install ${missing[*]} failed (run it by hand to see why)"
fi

((${#only[@]})) && exit 0

# -- root -------------------------------------------------------------------------------------------
# The environment binds port 443 on loopback addresses, holds a private mount namespace and runs kubelets.
(($(id -u) == 0)) || fail "the local environment needs root (port 443 on loopback, a private mount namespace, the kubelet): run make as root"
