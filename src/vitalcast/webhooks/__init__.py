"""Webhooks as the Standard Webhooks specification describes them: per-user endpoints, signed
deliveries kept in the database until delivered, retried with exponential backoff."""
