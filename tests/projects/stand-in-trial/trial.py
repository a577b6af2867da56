"""The stand-in trial of the sweep tests: a second's work instead of a training.

finish: log val_accuracy (best at learning rate 3e-3); fail: exit 1; fail-first: the first
trial to start fails, the others finish; wait: record the pid and sleep.
"""

import math
import os
import sys
import time
from pathlib import Path

import mlflow

learning_rate, behaviour = float(sys.argv[1]), sys.argv[2]
here = Path(__file__).parent
if behaviour == "fail-first":
    try:
        os.close(os.open(here / "failed-once", os.O_CREAT | os.O_EXCL))
        behaviour = "fail"
    except FileExistsError:
        behaviour = "finish"
if behaviour == "fail":
    sys.exit("stand-in trial: forced failure")
if behaviour == "wait":
    (here / "pids").mkdir(exist_ok=True)
    (here / "pids" / str(os.getpid())).touch()
    time.sleep(600)
with mlflow.start_run():
    mlflow.log_metric("val_accuracy", 1 - abs(math.log10(learning_rate) - math.log10(3e-3)) / 10)
