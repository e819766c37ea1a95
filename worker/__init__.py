"""snaparchive: export Exoscale snapshots, verify them while streaming, archive them to S3."""

__version__ = "0.1.0"
