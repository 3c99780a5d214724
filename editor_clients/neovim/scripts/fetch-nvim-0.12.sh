#!/usr/bin/env bash
# Fetch Neovim 0.12+ from Debian sid into a private directory, without touching the system.
#
# Debian bookworm ships Neovim 0.7; the plugin's native path needs 0.12 (vim.lsp.inline_completion).
# This downloads sid's neovim .debs and their shared-library closure with a private apt configuration
# (own source list, own package lists, own cache), extracts them with dpkg-deb into a private root and
# writes a wrapper that runs sid's nvim through sid's dynamic loader.  `--library-path` (not
# LD_LIBRARY_PATH) keeps programs that nvim starts, such as the language server, on the system C library.
#
# Usage: fetch-nvim-0.12.sh [CACHE_DIR]     (default: editor_clients/neovim/.cache/nvim-sid)
# Prints the wrapper's path as the last line of stdout.  Re-running reuses a working install.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_dir="${1:-$script_dir/../.cache/nvim-sid}"
mkdir -p "$cache_dir"
cache_dir="$(cd "$cache_dir" && pwd)"
root="$cache_dir/root"
wrapper="$cache_dir/bin/nvim"
minimum_minor=12

nvim_minor() {  # the minor version of the nvim at $1, or nothing
    "$1" --version 2>/dev/null | sed -n '1s/^NVIM v0\.\([0-9][0-9]*\)\..*/\1/p'
}

# Neovim finds its bundled tree-sitter parsers (usr/lib/nvim/parser) in "../lib/nvim" beside its executable,
# and the executable it sees (/proc/self/exe) is the dynamic loader in usr/lib/<multiarch>: it looks in
# usr/lib/lib/nvim. A link from there to usr/lib/nvim lets it find them (and fixes an older install).
link_lib_dir() {
    if [[ -d "$root/usr/lib/nvim" && ! -e "$root/usr/lib/lib/nvim" ]]; then
        mkdir -p "$root/usr/lib/lib"
        ln -sfn ../nvim "$root/usr/lib/lib/nvim"
    fi
}

if [[ -x "$wrapper" ]]; then
    minor="$(nvim_minor "$wrapper")"
    if [[ -n "$minor" && "$minor" -ge "$minimum_minor" ]]; then
        link_lib_dir
        echo "$wrapper"
        exit 0
    fi
fi

for tool in apt-get apt-cache dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "fetch-nvim-0.12: '$tool' is required (a Debian system)" >&2; exit 2; }
done
arch="$(dpkg --print-architecture)"
case "$arch" in
    amd64) multiarch=x86_64-linux-gnu; loader=ld-linux-x86-64.so.2 ;;
    arm64) multiarch=aarch64-linux-gnu; loader=ld-linux-aarch64.so.1 ;;
    *) echo "fetch-nvim-0.12: unsupported architecture '$arch'" >&2; exit 2 ;;
esac

apt_dir="$cache_dir/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/etc/parts" "$cache_dir/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" \
    > "$apt_dir/etc/sources.list"
apt_options=(
    -o "Dir::Etc::SourceList=$apt_dir/etc/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/etc/parts"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=$apt_dir/etc/parts"
    -o "APT::Architecture=$arch"
    -o "APT::Architectures=$arch"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=$(id -un)"
)

echo "fetch-nvim-0.12: updating the private sid package lists" >&2
apt-get "${apt_options[@]}" -qq update >&2

# The runtime closure of neovim in sid: every package it depends on, recursively, first alternative only.
mapfile -t packages < <(
    apt-cache "${apt_options[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances --no-pre-depends neovim \
    | sed -n 's/^\([a-z0-9][a-z0-9.+-]*\)$/\1/p' | sort -u
)
if [[ ${#packages[@]} -eq 0 ]]; then
    echo "fetch-nvim-0.12: sid lists no neovim package" >&2
    exit 1
fi
echo "fetch-nvim-0.12: downloading ${#packages[@]} packages: ${packages[*]}" >&2
(cd "$cache_dir/debs" && apt-get "${apt_options[@]}" -qq download "${packages[@]}" >&2)

rm -rf "$root"
mkdir -p "$root"
for deb in "$cache_dir"/debs/*.deb; do
    dpkg-deb -x "$deb" "$root"
done
link_lib_dir

lib_dirs="$root/usr/lib/$multiarch:$root/lib/$multiarch"
mkdir -p "$(dirname "$wrapper")"
cat > "$wrapper" <<EOF
#!/bin/sh
# Runs Debian sid's Neovim from $root (written by fetch-nvim-0.12.sh).
export VIMRUNTIME="$root/usr/share/nvim/runtime"
exec "$root/usr/lib/$multiarch/$loader" --library-path "$lib_dirs" "$root/usr/bin/nvim" "\$@"
EOF
chmod +x "$wrapper"

minor="$(nvim_minor "$wrapper")"
if [[ -z "$minor" || "$minor" -lt "$minimum_minor" ]]; then
    echo "fetch-nvim-0.12: the extracted nvim does not report version 0.$minimum_minor or newer:" >&2
    "$wrapper" --version >&2 || true
    exit 1
fi
# Downloaded archives are only needed to build the root.
rm -f "$cache_dir"/debs/*.deb
echo "$wrapper"
