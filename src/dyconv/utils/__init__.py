"""Framework utilities shared by the entry points (no model or dataset code here)."""
