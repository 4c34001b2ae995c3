"""Live alerts: an alert episode in a save of a live view is announced once per episode and
rule across the cluster, to the session's subscribers (``session.alert``) and the owner's
webhooks."""
