"""The target side of the target <-> pod wire: the hpush, hpull and ws communicators (comm)."""
