"""Offline jobs on a target: listing, workers, transform and delivery (offline),
and the receive side of direct puts (receipts)."""
