"""The tasks (identification, recognition, video) and the one engine that runs them.

Importing this package registers every task in TASKS; a competition names its task (`task = ...`)."""
from common.tasks.base import TASKS, Task
from common.tasks import identification, recognition, video  # noqa: F401,E402  (register the tasks)

__all__ = ["TASKS", "Task"]
