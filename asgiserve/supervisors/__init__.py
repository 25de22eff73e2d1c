"""Process supervisors (multiple workers, reload)."""
