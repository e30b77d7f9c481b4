"""notify: mass notification with proof of delivery (per-recipient receipts, acks, CAP 1.2)."""
