# Shared by scripts/run and scripts/test: a virtual environment in .venv, and Debian packages
# installed when missing (as root, with apt-get). Sourced, not run.

# Debian's python3 needs python3-venv for "python3 -m venv"; install it when that is missing.
ensure_venv() {
  if [ -x .venv/bin/python ]; then
    return
  fi
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    ensure_debian_packages python3-venv
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
}

# ensure_debian_packages PKG... : apt-get install the packages that are not installed yet.
ensure_debian_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "note: Debian packages ${missing[*]} are missing and cannot be installed here (need root and apt-get);" \
         "tests that need them will be skipped" >&2
    return 0
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ensure_npm_packages DIR : install DIR's package-lock.json into DIR/node_modules (npm ci) when
# node_modules is missing or older than the lock file. Debian's npm is installed when npm is
# missing; without it the tests that need these packages are skipped.
ensure_npm_packages() {
  local dir=$1
  command -v npm >/dev/null || ensure_debian_packages nodejs npm
  if ! command -v npm >/dev/null; then
    echo "note: npm is missing; tests that need the npm packages of $dir will be skipped" >&2
    return 0
  fi
  local stamp="$dir/node_modules/.package-lock.json"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$dir/package-lock.json" ]; then
    return 0
  fi
  echo "installing npm packages in $dir" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}

# build_fastpath : compile the kernel fast path (turnd/fastpath/relay.bpf.c) with clang, after
# installing Debian's clang, libbpf-dev and bpftool when missing. Without them turnd relays in
# userspace ([fastpath] mode "auto" says why in its log).
build_fastpath() {
  ensure_debian_packages clang llvm libbpf-dev bpftool
  python3 turnd/fastpath/build.py || true
}
