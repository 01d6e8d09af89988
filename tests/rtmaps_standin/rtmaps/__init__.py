"""Stand-in of RTMaps' Python package (tests only; see ../README.md). Python 3.5+ syntax: it runs on targets too."""
