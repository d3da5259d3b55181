"""Backups: restic snapshots of the databases, the media store and the signing key."""
