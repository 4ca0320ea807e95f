"""The single binary's entry point: the ``eskit`` command line (PyInstaller runs this file)."""

import sys

from engine.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
