"""Data lifecycle: deleting a stretch of samples, erasing an account, exporting everything,
expiring old raw samples (DESIGN.md, Version 3, "Data lifecycle")."""
