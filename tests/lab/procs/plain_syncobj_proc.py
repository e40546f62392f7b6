"""pysyncobj exactly as shipped, without a password: the positive control that
shows the raw-pickle payload of the security test really executes code."""
import sys
import time

from pysyncobj import SyncObj, SyncObjConf

obj = SyncObj(sys.argv[1], [], SyncObjConf())
while True:
    time.sleep(1)
