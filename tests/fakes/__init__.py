"""Local HTTP fakes of the cloud snapshot APIs snaparchive reads (besides Exoscale, whose
simulator lives in :mod:`worker.simulator`). Each serves real HTTP on a loopback port."""
