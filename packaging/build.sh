#!/usr/bin/env bash
# Build the single executable dist/eskit with PyInstaller (see packaging/README.md).
#
# Run it with the Python of a virtualenv where eskit (with its dev extra, which brings
# PyInstaller) and the example plugins are installed; `make binary` does exactly that.
# PYTHON picks that interpreter (default: python3 on PATH).
set -euo pipefail

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
started=$SECONDS
"$python" -m PyInstaller --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/eskit.spec
echo "built dist/eskit: $(du -h dist/eskit | cut -f1) in $((SECONDS - started)) s"
