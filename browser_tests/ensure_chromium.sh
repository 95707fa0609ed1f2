#!/bin/sh
# Print the path of a Chromium executable for `make test-browser`, installing Debian's `chromium` package
# (apt-get, with sudo when not root) when none is found. Playwright is pointed at this executable; its own
# browser downloads (`playwright install`) are never used. Messages go to stderr, the path to stdout.
# FFTD_CHROMIUM=/path/to/chrome skips the search.
set -eu

find_chromium() {
    if [ -n "${FFTD_CHROMIUM:-}" ]; then
        if [ -x "$FFTD_CHROMIUM" ]; then echo "$FFTD_CHROMIUM"; return 0; fi
        echo "test-browser: FFTD_CHROMIUM=$FFTD_CHROMIUM is not an executable file" >&2
        exit 1
    fi
    for name in chromium chromium-browser google-chrome-stable google-chrome; do
        if path="$(command -v "$name" 2>/dev/null)"; then echo "$path"; return 0; fi
    done
    return 1
}

if find_chromium; then exit 0; fi

echo "test-browser: no Chromium found (chromium, chromium-browser, google-chrome); installing Debian's chromium package" >&2
if ! command -v apt-get >/dev/null 2>&1; then
    echo "test-browser: cannot install Chromium here (no apt-get). Install Chromium or Chrome with your package" >&2
    echo "  manager, or set FFTD_CHROMIUM=/path/to/chromium, then run 'make test-browser' again." >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "test-browser: installing Chromium needs root: run 'sudo apt-get install -y chromium'" >&2
    echo "  (or set FFTD_CHROMIUM=/path/to/chromium), then 'make test-browser' again." >&2
    exit 1
fi
if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update \
       && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } >&2; then
    echo "test-browser: 'apt-get install -y chromium' failed (see above). On Ubuntu the chromium packages are" >&2
    echo "  snap wrappers: install Chrome or Chromium another way and set FFTD_CHROMIUM=/path/to/it." >&2
    exit 1
fi
if find_chromium; then exit 0; fi
echo "test-browser: the chromium package is installed but no chromium executable is on PATH;" >&2
echo "  set FFTD_CHROMIUM=/path/to/chromium and run 'make test-browser' again." >&2
exit 1
