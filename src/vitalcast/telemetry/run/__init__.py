"""Orchestration: one compute under its lease, the coordinator that bounds them, and what asks
for them (session changes, live ticks, the insights across sessions)."""
