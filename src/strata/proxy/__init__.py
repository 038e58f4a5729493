"""The PostgreSQL wire-protocol proxy: live sessions relayed to the primary,
time-travelling sessions routed to historical instances (see server.py)."""
