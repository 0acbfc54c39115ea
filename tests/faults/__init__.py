"""Fault-injection suite (issue #10, item 7): misbehaving pods, killed targets, full disks.

Run: ``.venv/bin/python -m pytest tests/faults`` (set ``AIOETL_FAULT_SUMMARY=<file>``
to get the per-case counts as JSON; they are also printed at the end of the run).
"""
