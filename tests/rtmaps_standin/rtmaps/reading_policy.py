"""Reading policies a Python-bridge component may force (stand-in values; RTMaps' own are opaque constants)."""

REACTIVE = "reactive"
SAMPLING = "sampling"
TRIGGERED = "triggered"
SYNCHRO = "synchro"
ALL = (REACTIVE, SAMPLING, TRIGGERED, SYNCHRO)
