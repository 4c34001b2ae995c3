"""Scaled-out computes: the BullMQ queue service, its worker process and the backfill."""
