# Sourced by run_ts.sh and inspector.sh: install the packages pinned by a
# package.json + package-lock.json with `npm ci`, from the registry npm is configured
# with, and only when the lock file changed since the last install.
#   npm_deps SRC_DIR DEST_DIR
# SRC_DIR holds package.json and package-lock.json; DEST_DIR gets node_modules/
# (DEST_DIR may be SRC_DIR). Progress goes to stderr.
# Where inspector.sh keeps the Inspector and its Node.
inspector_dir() {
  echo "${AISBX_INSPECTOR_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aisbx-inspector}"
}

npm_deps() {
  local src="$1" dest="$2" stamp
  stamp="$dest/node_modules/.aisbx-package-lock.json"
  if [[ -f "$stamp" ]] && cmp -s "$src/package-lock.json" "$stamp"; then
    return 0
  fi
  command -v npm >/dev/null || { echo "npm is needed to install $src/package.json" >&2; return 1; }
  mkdir -p "$dest"
  if [[ "$src" != "$dest" ]]; then
    cp "$src/package.json" "$src/package-lock.json" "$dest/"
  fi
  echo "installing the npm packages of $src/package.json into $dest" >&2
  (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$src/package-lock.json" "$stamp"
}
