#!/usr/bin/env bash
# Offscreen OpenGL for MuJoCo on a headless machine: Mesa's EGL and OSMesa (Debian/Ubuntu).
# Installs them only when missing and only when we can (root with apt-get); otherwise says what to do.
set -euo pipefail
missing=()
for pkg in libegl-mesa0 libosmesa6 libgl1 libegl1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
((${#missing[@]} == 0)) && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing offscreen rendering libraries: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "warning: MuJoCo offscreen rendering needs: ${missing[*]} (install them with your package manager)" >&2
fi
