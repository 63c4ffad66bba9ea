"""Run by the tests in a child process: hold a run folder (``bodyfit.files.run_lock``) as a
running ``bodyfit train`` would, until killed.

    python hold_lock.py FOLDER MARKER      (MARKER is created once the folder is held)
"""
import sys
import time
from pathlib import Path

from bodyfit.files import run_lock

with run_lock(sys.argv[1], "bodyfit train"):
    Path(sys.argv[2]).touch()
    time.sleep(600)
