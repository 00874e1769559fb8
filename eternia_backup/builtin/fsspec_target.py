"""Built-in target: every protocol fsspec can open (plain paths, file://, memory://, s3:// ...)."""

from eternia_backup import hookimpl
from eternia_backup.storage import FsspecTarget


@hookimpl
def eternia_register_targets(register):
    register(FsspecTarget)
