#!/usr/bin/env bash
# Installs service-traceroute: the binary, its man pages and its shell completions (bash, zsh,
# fish), all made by the binary itself from its option definitions (`service-traceroute
# generate`). Then `man service-traceroute` and `man service-traceroute-trace` work, and the
# shells complete subcommands and options.
#
#   sudo scripts/install.sh                  # into /usr/local, building the release binary
#   sudo scripts/install.sh --setcap         # and give the binary CAP_NET_RAW and CAP_NET_ADMIN
#   scripts/install.sh --prefix ~/.local     # no root needed (run the tool with sudo, or setcap)
#   scripts/install.sh --destdir /tmp/pkg --prefix /usr --binary target/release/service-traceroute
#   sudo scripts/install.sh --systemd        # and the units of dist/ (monitor, reverse server)
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local destdir="" binary="" setcap=0 systemd=0
while (($#)); do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --setcap) setcap=1; shift ;;
    --systemd) systemd=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ -z $binary ]]; then
  source scripts/setup.sh
  cargo build --release --quiet -p service-traceroute
  binary=target/release/service-traceroute
fi
[[ -x $binary ]] || { echo "install: $binary is not an executable" >&2; exit 2; }

root="$destdir$prefix"
bindir="$root/bin" mandir="$root/share/man/man1"
bash_dir="$root/share/bash-completion/completions"
zsh_dir="$root/share/zsh/site-functions"
fish_dir="$root/share/fish/vendor_completions.d"
install -d "$bindir" "$mandir" "$bash_dir" "$zsh_dir" "$fish_dir"
install -m 0755 "$binary" "$bindir/service-traceroute"
tool="$bindir/service-traceroute"

# Generated into a scratch directory first: a failure leaves no half-written page behind.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$tool" generate man "$tmp" 2>/dev/null
install -m 0644 "$tmp"/*.1 "$mandir/"
"$tool" generate completions bash > "$tmp/bash"
"$tool" generate completions zsh > "$tmp/zsh"
"$tool" generate completions fish > "$tmp/fish"
install -m 0644 "$tmp/bash" "$bash_dir/service-traceroute"
install -m 0644 "$tmp/zsh" "$zsh_dir/_service-traceroute"
install -m 0644 "$tmp/fish" "$fish_dir/service-traceroute.fish"

if ((systemd)); then
  # The units run the binary where it was installed, as a dynamic user with only the
  # capabilities they name (no setcap needed).
  unit_dir="$root/lib/systemd/system"
  install -d "$unit_dir"
  for u in dist/*.service; do
    sed "s|/usr/local/bin/service-traceroute|$prefix/bin/service-traceroute|" "$u" > "$tmp/unit"
    install -m 0644 "$tmp/unit" "$unit_dir/$(basename "$u")"
  done
fi
if ((setcap)); then
  setcap cap_net_raw,cap_net_admin+ep "$tool"
fi
echo "install: $tool, $(ls "$tmp"/*.1 | wc -l) man pages in $mandir, completions for bash, zsh and fish$( ((systemd)) && echo ", systemd units in $root/lib/systemd/system")"
