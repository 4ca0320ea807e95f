"""PyInstaller runtime hook: the IANA time zones (``tzdata``) from one zip in the bundle.

``tzdata`` holds some 600 small files; extracted one by one on every start of the one-file
binary they cost about 0.7 s here. Zipped, they are one file, and ``zoneinfo`` reads them
through the zip importer's resource reader. The zip goes last on ``sys.path``.
"""

import os
import sys

_ZIP = os.path.join(getattr(sys, "_MEIPASS", ""), "tzdata.zip")
if os.path.isfile(_ZIP):
    sys.path.append(_ZIP)
