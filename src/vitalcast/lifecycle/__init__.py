"""Data lifecycle: deleting a stretch of samples, erasing an account, exporting everything,
expiring old raw samples (docs/design.md, "Data lifecycle")."""
