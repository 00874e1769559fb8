"""The import path of the project's original description, for the example app: ``from modules.backup_manager import backup_manager``."""

from eternia_backup import backup_manager  # noqa: F401
