"""The directory service: every person's versions in a store; a read API without contacts."""
