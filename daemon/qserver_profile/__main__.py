"""Print the directory of livetomo's queueserver profile (for start-re-manager's options)."""

from . import DIRECTORY

print(DIRECTORY)
