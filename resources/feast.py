"""The Feast feature store, as a resource that hands out the repo and a FeatureStore on it."""

from pathlib import Path

import dagster as dg

from ml_platform.features.store import FeatureRepo, open_store
from ml_platform.settings import feast_redis_connection


class FeastResource(dg.ConfigurableResource):
    """The repo (registry, offline table) under the state directory; the online store in SQLite beside
    it, or in Redis when ``redis_url`` is set (the production profile).

    ``redis_url`` and ``redis_password`` are given as ``dg.EnvVar`` when they hold a secret, so the UI
    shows the variable's name, never its value.
    """

    repo_dir: str
    offline_dir: str
    project: str
    redis_url: str = ""
    redis_password: str = ""

    def repo(self) -> FeatureRepo:
        redis = feast_redis_connection(self.redis_url, self.redis_password) if self.redis_url else ""
        return FeatureRepo(Path(self.repo_dir), Path(self.offline_dir), self.project, redis)

    def store(self):
        return open_store(self.repo())
