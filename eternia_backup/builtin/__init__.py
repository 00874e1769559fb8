"""Built-in providers. Each module is an ordinary plugin, registered exactly like
a third-party one (see :data:`eternia_backup.plugins.BUILTIN_PLUGINS`)."""
