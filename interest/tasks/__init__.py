"""The task registry: every job (train, tune, score, evaluate) looks tasks up here."""

from interest.config import ConfigError
from interest.tasks.base import Meta, Task, TrainConfig
from interest.tasks.recommend.task import RecommendTask
from interest.tasks.sequence.task import SequenceTask
from interest.tasks.tags.task import TagsTask
from interest.tasks.zeroshot.task import ZeroShotTask

TASKS: dict[str, type[Task]] = {
    "sequence": SequenceTask,
    "tags": TagsTask,
    "recommend": RecommendTask,
    "zeroshot": ZeroShotTask,
}

__all__ = ["TASKS", "Meta", "Task", "TrainConfig", "get_task"]


def get_task(name: str) -> Task:
    try:
        return TASKS[name]()
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
