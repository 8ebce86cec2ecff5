"""The workers' manage.py commands: relay_outbox, consume_events, prune_metrics, rotate_secrets.
May import every area of orders but web and admin, plus store and vmbackend's protocol."""
