"""The directory service: every version of every person and directory entry in a store; a read
API without contacts or token hashes."""
